-- Apply key-level invalidations of one or more tags to a cache Redis in one
-- call: for each, delete the keys, drop them from the tag set and record the
-- subscriber's position — the same checks and effects as invalidate.lua, for
-- a run of messages at once (whole-tag invalidations go through
-- invalidate.lua, which guards the tag's cardinality).
-- Needs MAX_UNPACK before it (lua.go prepends it).
-- The invalidations come in groups, one tag and position each, in order.
-- KEYS, per group: the tag set {tenant:<t>}:tag:<tag>, the position key
--   {tenant:<t>}:pos:<service>:<tag> (unused when the epoch is ''), then the
--   cache keys of each invalidation of the group, in order.
-- ARGV, per group: the epoch of its messages ('' when no position is kept),
--   '1' for strict order (a version must follow the position) else '0', the
--   number of invalidations m; then for each of them: its version and its
--   number of cache keys (at least 1).
-- Returns a string of one status letter per invalidation, in order, then
-- the keys each deleted: S for SUCCESS, D for DUPLICATE (the position is at
-- or past the version; nothing done), G for GAP (strict, and the position is
-- behind the previous version; nothing done). One string rather than a
-- status each keeps the reply small.
local status, out = {}, {''}
local a, k = 1, 1
while a <= #ARGV do
  local tagSet, posKey = KEYS[k], KEYS[k + 1]
  k = k + 2
  local epoch, strict, m = ARGV[a], ARGV[a + 1] == '1', tonumber(ARGV[a + 2])
  a = a + 3
  local e, v
  if epoch ~= '' then
    local pos = redis.call('GET', posKey)
    if pos then
      local pe, pv = string.match(pos, '^(.*):(%d+)$')
      e, v = pe, tonumber(pv)
    end
  end
  local moved = false
  for _ = 1, m do
    local version, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    a = a + 2
    local first, last = k, k + n - 1
    k = k + n
    if epoch ~= '' and e == epoch and v >= version then
      status[#status + 1] = 'D'
      out[#out + 1] = 0
    elseif epoch ~= '' and strict and e == epoch and v < version - 1 then
      status[#status + 1] = 'G'
      out[#out + 1] = 0
    else
      local deleted = 0
      for i = first, last, MAX_UNPACK do
        local j = math.min(i + MAX_UNPACK - 1, last)
        deleted = deleted + redis.call('UNLINK', unpack(KEYS, i, j))
        redis.call('SREM', tagSet, unpack(KEYS, i, j))
      end
      status[#status + 1] = 'S'
      out[#out + 1] = deleted
      if epoch ~= '' then
        e, v, moved = epoch, version, true
      end
    end
  end
  if moved then
    redis.call('SET', posKey, e .. ':' .. v)
  end
end
out[1] = table.concat(status)
return out
