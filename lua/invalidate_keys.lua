-- Apply key-level invalidations of one or more tags to a cache Redis in one
-- call: for each, delete the keys, drop them from the tag's sets and record the
-- subscriber's position — the same checks and effects as invalidate.lua, for
-- a run of messages at once (whole-tag invalidations go through
-- invalidate.lua, which guards the tag's cardinality).
-- Needs position.lua and MAX_UNPACK before it (lua.go prepends them).
-- The invalidations come in groups, one tag and position each, in order.
-- KEYS, per group: the tag set {tenant:<t>}:tag:<tag>, the position key
--   {tenant:<t>}:pos:<service>:<tag> (unused when the epoch is ''), the
--   channel's batch mark {tenant:<t>}:pos:<service>:<tag>#batch (unused when
--   the token is ''), the tag's ref-registered set {tenant:<t>}:tag:<tag>#refs,
--   then the cache keys of each invalidation of the group, in order.
-- ARGV, per group: the epoch of its messages ('' when no position is kept),
--   the mode ('1' strict: a version must follow the position, else '0'),
--   the caller's pipeline token when a whole tag of the channel comes
--   before the group in it (else ''), the number of invalidations m; then
--   for each of them: its version (or "version:chain": position.lua) and
--   its number of cache keys (at least 1).
-- Returns a string of one status letter per invalidation, in order, then
-- the keys each deleted: S for SUCCESS, D for DUPLICATE (the position is at
-- or past the version; nothing done), G for GAP (strict, and the position is
-- behind the previous version; nothing done), W for WAIT (an earlier whole
-- tag of the channel in the pipeline was deferred; nothing done). One
-- string rather than a status each keeps the reply small.
local status, out = {}, {''}
local a, k = 1, 1
while a <= #ARGV do
  local tagSet, posKey, mark, tagRefs = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  k = k + 4
  local epoch, mode, token, m = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  a = a + 4
  local e, v
  local waits = false
  if epoch ~= '' then
    waits = batch_waits(mark, token)
    e, v = read_position(posKey)
  end
  local moved = false
  local at -- the version argument of the last applied, stored as given
  for _ = 1, m do
    local varg, n = ARGV[a], tonumber(ARGV[a + 1])
    local version = version_of(varg)
    a = a + 2
    local first, last = k, k + n - 1
    k = k + n
    local verdict
    if waits then
      verdict = 'W'
    elseif epoch ~= '' then
      verdict = position_rule(e, v, epoch, version, mode)
    end
    if verdict then
      status[#status + 1] = verdict
      out[#out + 1] = 0
    else
      local deleted = 0
      for i = first, last, MAX_UNPACK do
        local j = math.min(i + MAX_UNPACK - 1, last)
        deleted = deleted + redis.call('UNLINK', unpack(KEYS, i, j))
        redis.call('SREM', tagSet, unpack(KEYS, i, j))
        redis.call('SREM', tagRefs, unpack(KEYS, i, j))
      end
      status[#status + 1] = 'S'
      out[#out + 1] = deleted
      if epoch ~= '' then
        e, v, at, moved = epoch, version, varg, true
      end
    end
  end
  if moved then
    redis.call('SET', posKey, e .. ':' .. at)
  end
end
out[1] = table.concat(status)
return out
