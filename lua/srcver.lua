-- Remember the newest source_version routed for one entity; refuse older ones.
-- KEYS[1]  <prefix>:srcver:{<tenant>}:<domain>:<entity>
-- ARGV[1]  the event's source_version
-- ARGV[2]  how long to remember it, in milliseconds
-- Returns 1 when the event is to be routed (not older than the newest seen),
-- 0 when an event with a higher source_version was already routed.
local v = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur > v then
  return 0
end
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return 1
