-- The token bucket shared by publish.lua (a channel's bucket) and budget.lua
-- (a tenant's or the global budget); lua.go prepends this file to both, so
-- the rule lives in one place. It defines functions only and reads no KEYS
-- or ARGV. A bucket's state is its tokens (below 0 when some were taken on
-- credit) and at, the microseconds of the server's TIME of its last take;
-- the subscriber's in-memory buckets (internal/storm, golang.org/x/time/rate)
-- follow the same rule, which lua/bucket_test.go holds on real Redis.

-- bucket_now is the server's time in microseconds.
local function bucket_now()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000000 + tonumber(time[2])
end

-- bucket_tokens is what a bucket of rate tokens per second and burst holds
-- at now, when it held tokens at at: it refills at rate from its last take,
-- up to burst; one with no state (tokens or at false: new, or expired) is
-- full. So is one whose last take is in the future: the server's clock
-- went back since (an NTP step, a failover to a server whose clock is
-- behind), and refilling from then would hold the bucket empty until the
-- clock is back there, an hour for an hour's step. At most one burst more
-- is taken per step; the next take writes at back to now.
local function bucket_tokens(tokens, at, now, rate, burst)
  if tokens and at and now >= tonumber(at) then
    return math.min(burst, tonumber(tokens) + (now - tonumber(at)) * rate / 1000000)
  end
  return burst
end

-- bucket_wait is the milliseconds until a bucket holding tokens (below 1)
-- has one.
local function bucket_wait(tokens, rate)
  return math.ceil((1 - tokens) / rate * 1e3)
end
