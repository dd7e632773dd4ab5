-- Apply one invalidation to a cache Redis: delete the keys, drop them from
-- the tag set and record the subscriber's position, all at once.
-- Needs MAX_UNPACK before it (lua.go prepends it).
-- KEYS[1]   tag set {tenant:<t>}:tag:<tag>
-- KEYS[2]   position key {tenant:<t>}:pos:<service>:<tag> (unused when ARGV[2] is '')
-- KEYS[3..] cache keys to delete; none means the whole tag
-- ARGV[1]   cardinality guard: a larger tag set is refused (the caller chunks it)
-- ARGV[2]   epoch of the message, or '' when no position is kept
-- ARGV[3]   version of the message
-- ARGV[4]   '1' for strict order: refuse a version that does not follow the
--           position (the caller pipelines consecutive versions and must not
--           skip one whose call failed); '0' lets a recovery jump ahead
-- Returns {status, keys deleted}; status is SUCCESS, EMPTY_TAG_SET,
-- TAG_CARDINALITY_EXCEEDED (nothing done, position unchanged), DUPLICATE
-- (the position is already at or past this version; nothing done) or GAP
-- (strict, and the position is behind the previous version; nothing done).
local epoch = ARGV[2]
local version = tonumber(ARGV[3])
if epoch ~= '' then
  local pos = redis.call('GET', KEYS[2])
  if pos then
    local e, v = string.match(pos, '^(.*):(%d+)$')
    if e == epoch and tonumber(v) >= version then
      return {'DUPLICATE', 0}
    end
    if e == epoch and ARGV[4] == '1' and tonumber(v) < version - 1 then
      return {'GAP', 0}
    end
  end
end

local function unlink(list, first, last)
  local n = 0
  for i = first, last, MAX_UNPACK do
    n = n + redis.call('UNLINK', unpack(list, i, math.min(i + MAX_UNPACK - 1, last)))
  end
  return n
end

local status, deleted = 'SUCCESS', 0
if #KEYS > 2 then
  deleted = unlink(KEYS, 3, #KEYS)
  for i = 3, #KEYS, MAX_UNPACK do
    redis.call('SREM', KEYS[1], unpack(KEYS, i, math.min(i + MAX_UNPACK - 1, #KEYS)))
  end
else
  local n = redis.call('SCARD', KEYS[1])
  if n > tonumber(ARGV[1]) then
    return {'TAG_CARDINALITY_EXCEEDED', n}
  end
  if n == 0 then
    status = 'EMPTY_TAG_SET'
  else
    local members = redis.call('SMEMBERS', KEYS[1])
    deleted = unlink(members, 1, #members)
    redis.call('UNLINK', KEYS[1])
  end
end
if epoch ~= '' then
  redis.call('SET', KEYS[2], epoch .. ':' .. version)
end
return {status, deleted}
