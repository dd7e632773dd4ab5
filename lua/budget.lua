-- Take tokens from a shared token bucket (a tenant's or the global budget),
-- for every router at once.
-- KEYS[1]  the bucket: hash of tokens and at (microseconds of the server's TIME)
-- ARGV[1]  rate per second (> 0)
-- ARGV[2]  burst
-- ARGV[3]  n: tokens wanted; a negative n gives -n tokens back (unused ones)
-- ARGV[4]  '1' to take all n even beyond the tokens there are (on credit)
-- Returns the tokens granted (0..n, 0 for a give-back) and, when fewer than
-- n were, the milliseconds until the bucket has one more (else 0).
-- Needs bucket.lua before it (lua.go prepends it).
local now = bucket_now()
local rate, burst, n, force = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local st = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = bucket_tokens(st[1], st[2], now, rate, burst)
local granted = 0
if n < 0 then
  tokens = math.min(burst, tokens - n)
elseif force then
  granted = n
  tokens = tokens - n
else
  granted = math.max(0, math.min(n, math.floor(tokens)))
  tokens = tokens - granted
end
local wait = 0
if granted < n then
  wait = bucket_wait(tokens, rate)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
-- A bucket left alone is full again after (burst - tokens) / rate: expiring
-- it then changes nothing.
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1e3) + 1e3)
return {granted, wait}
