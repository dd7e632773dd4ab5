-- Read a consumer group's next entries of a stream, bounded in bytes: the
-- entries that come back hold at most the budget (and at least one entry),
-- and a field name or value above the largest whole comes back cut, so a
-- reader never holds a huge entry to learn that it refuses it.
-- KEYS[1]  the stream
-- ARGV[1]  the consumer group
-- ARGV[2]  the consumer
-- ARGV[3]  most entries
-- ARGV[4]  budget: most bytes of field names and values returned, each
--          weighing its framing too (weight.lua); at least one entry, and
--          one heavier than a whole read comes back as a stub (weight.lua)
-- ARGV[5]  largest field name or value returned whole, in bytes; a larger
--          one is cut
-- ARGV[6]  bytes kept of a name or value that is cut
-- Returns {entries, cut}: the entries delivered to the consumer
-- (XREADGROUP ... >), each {id, {field, value, ...}}, and for each value that
-- was cut, the entry's place (from 1), the field and its full length, one
-- after another. A name that was cut keeps its first bytes and says so in
-- itself: "<first bytes>… [cut when read: the name is <n> bytes]". Nothing
-- when no entry is new; a missing
-- stream or group is XREADGROUP's NOGROUP error. Entries read beyond the
-- budget are given back: taken off the consumer's pending list and the
-- group's last delivered id set back before them (with the count of entries
-- read, so the group's lag stays known), so the next read delivers them.
local group, consumer = ARGV[1], ARGV[2]
local count, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local whole, keep = tonumber(ARGV[5]), tonumber(ARGV[6])
local got = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', KEYS[1], '>')
if type(got) == 'table' and got.err then
  return got
end
if not got then
  return {}
end
local entries = got[1][2]
local total, n, cut = 0, #entries, {}
-- cutEntry cuts the names and values of entry i above the largest whole,
-- noting each value cut in cut, and returns the bytes the entry holds.
local function cutEntry(i, fields)
  local size = 0
  for j = 1, #fields, 2 do
    local k = fields[j]
    if #k > whole then
      k = string.sub(k, 1, keep) .. '… [cut when read: the name is ' .. #k .. ' bytes]'
      fields[j] = k
    end
    local v = fields[j + 1]
    if #v > whole then
      cut[#cut + 1] = i
      cut[#cut + 1] = k
      cut[#cut + 1] = #v
      fields[j + 1] = string.sub(v, 1, keep)
    end
    size = size + #fields[j] + #fields[j + 1] + 2 * FIELD_FRAMING
  end
  return size
end
for i, e in ipairs(entries) do
  local size = cutEntry(i, e[2])
  if i > 1 and total + size > budget then
    n = i - 1
    break
  end
  if size > heavy(budget, whole) then
    -- The first entry, heavier than a whole read: a stub (weight.lua).
    while #cut > 0 and cut[#cut - 2] == i do
      cut[#cut], cut[#cut - 1], cut[#cut - 2] = nil, nil, nil
    end
    e[2] = {'', ''}
    cut[#cut + 1] = i
    cut[#cut + 1] = ''
    cut[#cut + 1] = size
    size = 0
  end
  total = total + size
end
if n < #entries then
  -- Give back what does not fit: set the group's last delivered id back to
  -- the last entry returned first (a user without XGROUP SETID, from an
  -- older routerd acl, gets every entry read instead: nothing is lost),
  -- then take the others off the consumer's pending list.
  local given = #entries - n
  local setid = {'XGROUP', 'SETID', KEYS[1], group, entries[n][1]}
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, read
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'entries-read' then read = g[i + 1] end
    end
    if name == group and type(read) == 'number' then
      setid[#setid + 1] = 'ENTRIESREAD'
      setid[#setid + 1] = read - given
    end
  end
  local set = redis.pcall(unpack(setid))
  if type(set) == 'table' and set.err then
    for i = n + 2, #entries do
      cutEntry(i, entries[i][2])
    end
    return {entries, cut}
  end
  local back = {}
  for i = n + 1, n + given do
    back[#back + 1] = entries[i][1]
    entries[i] = nil
    if #back == MAX_UNPACK then
      redis.call('XACK', KEYS[1], group, unpack(back))
      back = {}
    end
  end
  if #back > 0 then
    redis.call('XACK', KEYS[1], group, unpack(back))
  end
  -- The values cut of entries given back are cut again when read again.
  while #cut > 0 and cut[#cut - 2] > n do
    cut[#cut], cut[#cut - 1], cut[#cut - 2] = nil, nil, nil
  end
end
return {entries, cut}
