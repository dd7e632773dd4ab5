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
-- Returns the entries XREADGROUP ... STREAMS KEYS[1] > delivers (exactly
-- those that fit), each {id, {field, value, ...}, cut}, where cut lists,
-- for each value that was cut, its field and full length. Nothing when no
-- entry is new. A missing stream or group is a NOGROUP error, as from
-- XREADGROUP.
local group, consumer = ARGV[1], ARGV[2]
local count, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local whole, keep = tonumber(ARGV[5]), tonumber(ARGV[6])
local nogroup = 'NOGROUP No such key \'' .. KEYS[1] .. '\' or consumer group \'' .. group .. '\''
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply(nogroup)
end
local last
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, id
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then id = g[i + 1] end
  end
  if name == group then last = id end
end
if not last then
  return redis.error_reply(nogroup)
end
-- The entries after the group's last delivered one are those '>' delivers,
-- in order: measure them a few at a time (each XRANGE holds its entries in
-- the script's memory) until the budget is spent.
local n, total, start = 0, 0, '(' .. last
local full = true
while full and n < count do
  local chunk = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', math.min(4, count - n))
  if #chunk == 0 then break end
  for _, e in ipairs(chunk) do
    local size = 0
    for i = 2, #e[2], 2 do
      size = size + (#e[2][i] > whole and keep or #e[2][i])
    end
    if n > 0 and total + size > budget then
      full = false
      break
    end
    n, total, start = n + 1, total + size, '(' .. e[1]
  end
end
if n == 0 then
  return {}
end
local got = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n, 'STREAMS', KEYS[1], '>')
local out = {}
for i, e in ipairs(got[1][2]) do
  local fields, cut = e[2], {}
  for j = 2, #fields, 2 do
    if #fields[j] > whole then
      cut[#cut + 1] = fields[j - 1]
      cut[#cut + 1] = #fields[j]
      fields[j] = string.sub(fields[j], 1, keep)
    end
  end
  out[i] = {e[1], fields, cut}
end
return out
