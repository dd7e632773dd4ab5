-- Read a consumer group's next entries of a stream, bounded in bytes: the
-- entries that come back hold at most the budget (and at least one entry),
-- and a value above the largest whole comes back cut, so a reader never
-- holds a huge entry to learn that it refuses it.
-- KEYS[1]  the stream
-- ARGV[1]  the consumer group
-- ARGV[2]  the consumer
-- ARGV[3]  most entries
-- ARGV[4]  budget: most bytes of field values returned (at least one entry)
-- ARGV[5]  largest value returned whole, in bytes; a larger one is cut
-- ARGV[6]  bytes kept of a value that is cut
-- Returns {entries, cut}: the entries delivered to the consumer
-- (XREADGROUP ... >), each {id, {field, value, ...}}, and for each value that
-- was cut, the entry's place (from 1), the field and its full length, one
-- after another; nothing when no entry is new; a missing
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
for i, e in ipairs(entries) do
  local fields, size = e[2], 0
  for j = 2, #fields, 2 do
    local v = fields[j]
    if #v > whole then
      cut[#cut + 1] = i
      cut[#cut + 1] = fields[j - 1]
      cut[#cut + 1] = #v
      fields[j] = string.sub(v, 1, keep)
    end
    size = size + #fields[j]
  end
  if i > 1 and total + size > budget then
    n = i - 1
    break
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
    for i = n + 1, #entries do
      local fields = entries[i][2]
      for j = 2, #fields, 2 do
        if #fields[j] > whole then
          cut[#cut + 1] = i
          cut[#cut + 1] = fields[j - 1]
          cut[#cut + 1] = #fields[j]
          fields[j] = string.sub(fields[j], 1, keep)
        end
      end
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
