-- Delete up to a batch of a large tag's keys: the chunked path for tags above
-- the cardinality guard, so no single call blocks Redis for long.
-- KEYS[1]  tag set
-- ARGV[1]  batch size (at most lua.MaxUnpack)
-- Returns {keys deleted, members left in the tag set}.
local members = redis.call('SPOP', KEYS[1], tonumber(ARGV[1]))
local deleted = 0
if #members > 0 then
  deleted = redis.call('UNLINK', unpack(members))
end
return {deleted, redis.call('SCARD', KEYS[1])}
