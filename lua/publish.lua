-- Publish one invalidation message on a channel, idempotently per event id.
-- KEYS[1]   {<channel>}:meta     hash: epoch, version
-- KEYS[2]   {<channel>}:history  stream of the last messages, entry id = <version>-0
-- KEYS[3]   {<channel>}:events   sorted set: event id -> version, as long as the history
-- ARGV[1]   channel name
-- ARGV[2]   event id
-- ARGV[3]   message JSON without epoch and version, starting with ',' and without the closing '}'
-- ARGV[4]   history length to keep
-- ARGV[5]   epoch to start when the channel has none (random hex from the caller)
-- ARGV[6]   'PUBLISH' or 'SPUBLISH'
-- ARGV[7]   replication id of this master ('' when unknown)
-- ARGV[8..] ids of further events merged into this message (coalescing), at most 1000
-- Returns {version, epoch, duplicate} where duplicate is 1 when every event
-- id was already published on this channel (nothing is sent again).
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'replid')
local epoch = meta[1]
if epoch and ARGV[7] ~= '' and meta[2] and meta[2] ~= ARGV[7] then
  -- The meta was written under another master's history: this is a promoted
  -- replica, which may lack the last versions. Versions could repeat, so
  -- start a new epoch; subscribers treat it as a gap.
  epoch = false
end
if not epoch then
  -- No meta: the channel is new, or Redis lost it. Start a new epoch and drop
  -- whatever history and event ids survived from the old one.
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'version', 0, 'replid', ARGV[7])
elseif not meta[2] and ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'replid', ARGV[7])
end
local seen = redis.call('ZSCORE', KEYS[3], ARGV[2])
for i = 8, #ARGV do
  if not seen then break end
  seen = redis.call('ZSCORE', KEYS[3], ARGV[i])
end
if seen then
  return {tonumber(seen), epoch, 1}
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
local msg = '{"epoch":"' .. epoch .. '","version":' .. version .. ARGV[3] .. '}'
local keep = tonumber(ARGV[4])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', keep, version .. '-0', 'm', msg)
redis.call('ZADD', KEYS[3], version, ARGV[2])
for i = 8, #ARGV do
  redis.call('ZADD', KEYS[3], version, ARGV[i])
end
local n = redis.call('ZCARD', KEYS[3])
if n > keep then
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, n - keep - 1)
end
redis.call(ARGV[6], ARGV[1], msg)
return {version, epoch, 0}
