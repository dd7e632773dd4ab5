-- Store a cache value and register its key under tags and entity
-- references, atomically; with a lease token, only while that lease is
-- held (the fill of a Fetch: docs/protocol.md#leases). Self-contained:
-- clients in other languages send it as it is, without the Go prelude.
-- KEYS[1]   cache key
-- KEYS[2]   with ARGV[4] only: the lease {tenant:<t>}:lease:<cache key>
-- KEYS[2..] (KEYS[3..] with ARGV[4]) sets to add the key to: tag sets
--           {tenant:<t>}:tag:<tag> (a plain value), or, for a value
--           registered under entity references, the tags' ref-registered
--           sets {tenant:<t>}:tag:<tag>#refs and the entity reference sets
--           {tenant:<t>}:ref:<domain>/<entity> (or a domain's type-level set
--           {tenant:<t>}:ref:<domain>)
-- ARGV[1]   value
-- ARGV[2]   time to live in milliseconds, 0 for none
-- ARGV[3]   optional (absent: 0): how many of the last KEYS are sets that
--           expire with their values (the reference sets; never a tag's
--           sets): such a set lives at least as long as every value
--           registered in it through this script (it takes the longest time
--           to live of them, or none when one has none), so it never
--           outlives them by much and never expires before one of them
-- ARGV[4]   optional: the token lease.lua gave. The value is stored only
--           when the lease still holds it — no invalidation covering the
--           key deleted it, it did not expire — and the lease is then
--           deleted and dropped from the sets (the same sets lease.lua
--           registered it in)
-- ARGV[5]   optional (with ARGV[4]; absent: 0): how many of the last KEYS
--           are sets the lease alone was registered in, not the value (the
--           type level of a domain whose entities the value turned out to
--           hold only once loaded): the lease is dropped from them, and
--           ARGV[3] counts the expiring sets before them
-- Returns the number of sets the key was new in, or -1 when the lease no
-- longer holds the token (nothing done).
local first, last = 2, #KEYS
if ARGV[4] and ARGV[4] ~= '' then
  if redis.call('GET', KEYS[2]) ~= ARGV[4] then
    return -1
  end
  first, last = 3, #KEYS - tonumber(ARGV[5] or '0')
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
local expiring = last - tonumber(ARGV[3] or '0')
local added = 0
for i = first, last do
  if i > expiring then
    local left = redis.call('PTTL', KEYS[i]) -- -2: no set yet; -1: no expiry
    added = added + redis.call('SADD', KEYS[i], KEYS[1])
    if ttl == 0 then
      if left >= 0 then
        redis.call('PERSIST', KEYS[i])
      end
    elseif left == -2 or (left >= 0 and left < ttl) then
      redis.call('PEXPIRE', KEYS[i], ARGV[2])
    end
  else
    added = added + redis.call('SADD', KEYS[i], KEYS[1])
  end
  if first == 3 then
    redis.call('SREM', KEYS[i], KEYS[2])
  end
end
if first == 3 then
  for i = last + 1, #KEYS do
    redis.call('SREM', KEYS[i], KEYS[2])
  end
  redis.call('DEL', KEYS[2])
end
return added
