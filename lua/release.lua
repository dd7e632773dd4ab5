-- Give a lease back without filling (the load failed or was cancelled), so
-- the next miss takes it at once instead of waiting for it to expire.
-- Self-contained: clients in other languages send it as it is.
-- KEYS[1]   the lease {tenant:<t>}:lease:<cache key>
-- KEYS[2..] the sets lease.lua registered it in
-- ARGV[1]   the token lease.lua was given
-- Returns 1 when the lease was this token's and is gone, 0 when it was not
-- (voided by an invalidation, expired, or another fill's since).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
for i = 2, #KEYS do
  redis.call('SREM', KEYS[i], KEYS[1])
end
return 1
