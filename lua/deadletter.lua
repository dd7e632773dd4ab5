-- Write a dead letter once per entry, or event of a packed entry: a batch
-- routed again (its router killed after it wrote the dead letters and
-- before it acknowledged the entries, a reply lost and the write sent
-- again) finds its dead letters written.
-- KEYS[1]  the dead-letter stream
-- KEYS[2]  what it holds dead letters of: a sorted set of origins by the
--          dead letter's time, capped as the stream is (names.go,
--          DeadLetterWrittenKey)
-- ARGV[1]  the dead letter's origin: "<stream> <entry id> <index>" (index
--          -1: the entry itself)
-- ARGV[2]  most dead letters the stream keeps (XADD … MAXLEN ~), and the
--          record with it
-- ARGV[3…] the dead letter's fields and values
-- Returns the dead letter's id, or '' when one of that origin was written
-- already (and is kept: the record drops its oldest past ARGV[2]).
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return ''
end
local most = tonumber(ARGV[2])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', most, '*', unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], tonumber(string.match(id, '^(%d+)-')), ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - most
if over > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
return id
