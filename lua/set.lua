-- Store a cache value and register its key under tags and entity
-- references, atomically; with a lease token, the fill of a read-through
-- miss (docs/protocol.md#32-reading-through-a-lease). Self-contained:
-- clients in other languages send it as it is, without the Go prelude.
-- KEYS[1]   cache key
-- KEYS[2]   its lease {tenant:<t>}:lease:<cache key> (names.LeaseKey),
--           always, so that every key the script touches is declared (a
--           cluster routes by them); any other name is an error
-- KEYS[3..] sets to add the key to: tag sets
--           {tenant:<t>}:tag:<tag> (a plain value), or, for a value
--           registered under entity references, the tags' ref-registered
--           sets {tenant:<t>}:tag:<tag>#refs and the entity reference sets
--           {tenant:<t>}:ref:<domain>/<entity> (or a domain's type-level set
--           {tenant:<t>}:ref:<domain>); with ARGV[4], then the sets
--           lease.lua added the key to (ARGV[5] of them)
-- ARGV[1]   value
-- ARGV[2]   time to live in milliseconds, 0 for none
-- ARGV[3]   optional (absent: 0): how many of the last sets to add the key
--           to expire with their values (the reference sets; never a tag's
--           sets): such a set lives at least as long as every value
--           registered in it through this script (it takes the longest time
--           to live of them, or none when one has none), so it never
--           outlives them by much and never expires before one of them
-- ARGV[4]   optional: the token lease.lua gave. The value is stored only
--           while the lease holds the token and the key is still in every
--           set lease.lua added it to (no invalidation covering it came
--           since); then the lease goes, and the key leaves the sets
--           lease.lua added it to that are not among its own. Otherwise
--           nothing is stored, and the lease, if still the token's, goes
--           (the next miss loads afresh). Without ARGV[4], a lease of the
--           key is deleted: a value being stored makes any fill in flight
--           of older data void.
-- ARGV[5]   with ARGV[4]: how many of the last KEYS are the sets lease.lua
--           added the key to
-- Returns the number of sets the key was new in, or -1 when the fill was
-- void (nothing stored); on a full cache Redis, the error OOM (nothing
-- written).
-- The lease's name: the tenant's hash tag, ":lease:" and the cache key
-- (names.LeaseKey). A caller of the contract before KEYS[2] was the lease
-- would pass a tag set there: refused, never deleted.
local lease = KEYS[2]
local tenant = lease and string.match(lease, '^(%b{})')
if not tenant or lease ~= tenant .. ':lease:' .. KEYS[1] then
  return redis.error_reply('set.lua: KEYS[2] must be the lease of KEYS[1], "{tenant:<t>}:lease:' .. tostring(KEYS[1]) .. '", got "' .. tostring(lease) .. '"')
end
local first, last = 3, #KEYS
local token = ARGV[4]
if token and token ~= '' then
  if redis.call('GET', lease) ~= token then
    return -1
  end
  last = #KEYS - tonumber(ARGV[5] or '0')
  for i = last + 1, #KEYS do
    if redis.call('SISMEMBER', KEYS[i], KEYS[1]) == 0 then
      redis.call('DEL', lease)
      return -1
    end
  end
end
-- The value's SET is the first write: a full cache Redis (maxmemory under
-- noeviction) refuses it with OOM before anything is written, where a
-- first DEL would let every write after it through, past maxmemory.
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
-- With a token the fill ends its lease; without, a value being stored makes
-- any fill in flight of older data void.
redis.call('DEL', lease)
local expiring = last - tonumber(ARGV[3] or '0')
local added, own = 0, {}
for i = first, last do
  own[KEYS[i]] = true
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
end
for i = last + 1, #KEYS do
  if not own[KEYS[i]] then
    redis.call('SREM', KEYS[i], KEYS[1])
  end
end
return added
