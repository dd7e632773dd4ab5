-- Suppress an event older (source_version) than the events of its entity
-- that already invalidated everything it names; remember what it names.
-- KEYS[1]  <prefix>:srcver:{<tenant>}:<domain>/<publisher>/<entity>
--          (names.SourceVersionKey; the publisher empty for the shared
--          ingress), a hash: each key -> the newest source_version that
--          invalidated it, and the field
--          ' ' (no key contains a space) -> the newest whole-tag one
-- ARGV[1]  the event's source_version
-- ARGV[2]  how long to remember the entity, in milliseconds
-- ARGV[3]  most keys remembered per entity; beyond it new keys are not
--          recorded (an older event naming them is then routed: safe)
-- ARGV[4…] the event's keys, at most 500; none for a whole-tag event
-- Returns 0 when the event is to be suppressed: a newer whole-tag event was
-- routed, or (for a key-level event) every key it names was invalidated by a
-- newer event. Otherwise it records the event and returns 1.
local WHOLE = ' '
-- Compared as Lua numbers (doubles: rounding never turns an older version
-- into a newer one), stored as given (exact).
local v, given = tonumber(ARGV[1]), ARGV[1]
local limit = tonumber(ARGV[3])
local n = #ARGV - 3
local whole = tonumber(redis.call('HGET', KEYS[1], WHOLE) or '0')
if whole > v then
  return 0
end
if n == 0 then
  redis.call('HSET', KEYS[1], WHOLE, given)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
local cur = redis.call('HMGET', KEYS[1], unpack(ARGV, 4))
local covered = true
for i = 1, n do
  if not cur[i] or tonumber(cur[i]) <= v then
    covered = false
    break
  end
end
if covered then
  return 0
end
local room = limit - redis.call('HLEN', KEYS[1])
local set = {}
for i = 1, n do
  local c = cur[i]
  if c and tonumber(c) < v then
    set[#set + 1] = ARGV[i + 3]
    set[#set + 1] = given
  elseif not c and room > 0 then
    room = room - 1
    set[#set + 1] = ARGV[i + 3]
    set[#set + 1] = given
  end
end
if #set > 0 then
  redis.call('HSET', KEYS[1], unpack(set))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
