-- Write a dead letter once per entry, or event of a packed entry: a batch
-- routed again (its router killed after it wrote the dead letters and
-- before it acknowledged the entries, a reply lost and the write sent
-- again) finds its dead letters written.
-- KEYS[1]  the dead-letter stream
-- KEYS[2]  what it holds dead letters of: a sorted set of origins by the
--          dead letter's time, trimmed as the stream is (names.go,
--          DeadLetterWrittenKey)
-- ARGV[1]  the dead letter's origin: "<stream> <entry id> <index>" (index
--          -1: the entry itself)
-- ARGV[2]  most dead letters the stream keeps (XADD … MAXLEN ~); the
--          record keeps the origins of those the stream holds
-- ARGV[3…] the dead letter's fields and values
-- Returns the dead letter's id, or '' when one of that origin was written
-- already (and is kept: the record drops an origin once the stream has
-- dropped its dead letter).
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return ''
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', tonumber(ARGV[2]), '*', unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], tonumber(string.match(id, '^(%d+)-')), ARGV[1])
-- The record drops what the stream dropped: the origins of dead letters
-- older than its first one. Not a count: MAXLEN ~ trims whole nodes, and
-- keeps up to a node's entries (stream-node-max-entries) past the cap.
-- Those of the first one's millisecond stay (a dead letter trimmed then
-- is not written again).
-- (A cap of 0 leaves none: then the origins before this one's.)
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
local first = head and head[1] or id
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.match(first, '^(%d+)-'))
return id
