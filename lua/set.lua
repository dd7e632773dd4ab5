-- Store a cache value and register its key under tags and entity
-- references, atomically. Self-contained: clients in other languages send
-- it as it is, without the Go prelude.
-- KEYS[1]   cache key
-- KEYS[2..] sets to add the key to: tag sets {tenant:<t>}:tag:<tag>, and
--           entity reference sets {tenant:<t>}:ref:<domain>/<entity> (or a
--           domain's type-level set {tenant:<t>}:ref:<domain>)
-- ARGV[1]   value
-- ARGV[2]   time to live in milliseconds, 0 for none
-- Returns the number of sets the key was new in.
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
local added = 0
for i = 2, #KEYS do
  added = added + redis.call('SADD', KEYS[i], KEYS[1])
end
return added
