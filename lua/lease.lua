-- Read a cache value, or take its lease when it is missing: the first half
-- of a read-through fill (Fetch), whose second half is set.lua with the
-- lease's token. Self-contained: clients in other languages send it as it
-- is, without the Go prelude. The contract is docs/protocol.md#32-reading-through-a-lease.
-- KEYS[1]   cache key
-- KEYS[2]   its lease {tenant:<t>}:lease:<cache key> (names.LeaseKey)
-- KEYS[3..] the sets the value will be registered in, as set.lua takes them
--           (tag sets, or the tags' ref-registered sets and the reference
--           sets; at least one tag's): the cache key is added to them now.
--           Every invalidation that covers the key takes it out of one of
--           them (key level: SREM; whole tag, entity level, chunks: the
--           set goes), and set.lua fills only while it is in all of them
-- ARGV[1]   token, unique to this fill (random, at least 16 characters)
-- ARGV[2]   lease time in milliseconds: the lease frees itself after it
-- ARGV[3]   optional (absent: 0): how many of the last KEYS expire with
--           their values (the reference sets, as set.lua's ARGV[3]): such a
--           set lives at least as long as the lease
-- Returns {'HIT', value} (cached), {'LEASED'} (the caller holds the lease:
-- load, then run set.lua with the token, or release.lua) or {'WAIT', ms}
-- (another fill holds the lease for ms more: read again later).
local value = redis.call('GET', KEYS[1])
if value then
  return {'HIT', value}
end
-- The lease's SET NX is the first write, also where a stray lease is
-- replaced: a full cache Redis (maxmemory under noeviction) refuses it with
-- OOM before anything is written, where a first DEL of the stray lease
-- would let every write after it through, past maxmemory (as set.lua).
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local left = redis.call('PTTL', KEYS[2])
  if left ~= -1 then
    return {'WAIT', left}
  end
  -- No time to live: no lease.lua made it (an operator's or a stray
  -- write). Left, it would hold every miss of the key for ever.
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
end
local ms = tonumber(ARGV[2])
local expiring = #KEYS - tonumber(ARGV[3] or '0')
for i = 3, #KEYS do
  local left
  if i > expiring then
    left = redis.call('PTTL', KEYS[i]) -- -2: no set yet; -1: no expiry
  end
  redis.call('SADD', KEYS[i], KEYS[1])
  if left and (left == -2 or (left >= 0 and left < ms)) then
    redis.call('PEXPIRE', KEYS[i], ms)
  end
end
return {'LEASED'}
