-- Give a lease back without filling (the load failed or was cancelled), so
-- the next miss takes it at once instead of waiting for it to expire.
-- Self-contained: clients in other languages send it as it is.
-- KEYS[1]   the lease {tenant:<t>}:lease:<cache key>
-- KEYS[2]   the cache key
-- KEYS[3..] the sets lease.lua added the cache key to: it leaves them again
--           while it has no value
-- ARGV[1]   the token lease.lua gave
-- Returns 1 when the lease was this token's and is gone, 0 when it was not
-- (expired, taken by another fill since, or voided by a plain set.lua).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 0 then
  for i = 3, #KEYS do
    redis.call('SREM', KEYS[i], KEYS[2])
  end
end
return 1
