-- Apply one invalidation to a cache Redis: delete the keys, drop them from
-- the tag's sets and record the subscriber's position, all at once.
-- Needs position.lua and MAX_UNPACK before it (lua.go prepends them).
-- KEYS[1]   tag set {tenant:<t>}:tag:<tag>: the tag's plain values (Set)
-- KEYS[2]   position key {tenant:<t>}:pos:<service>:<tag> (unused when ARGV[2] is '')
-- KEYS[3]   the channel's batch mark {tenant:<t>}:pos:<service>:<tag>#batch, a set
--           (unused when ARGV[5] is '')
-- KEYS[4]   the tag's ref-registered set {tenant:<t>}:tag:<tag>#refs: its
--           values registered under entity references (SetRefs)
-- KEYS[5..] cache keys to delete, then (the last ARGV[6]) entity reference
--           sets {tenant:<t>}:ref:…; neither means the whole tag (both of
--           its sets)
-- ARGV[1]   cardinality guard: a larger tag (its two sets together) is
--           refused (the caller chunks it)
-- ARGV[2]   epoch of the message, or '' when no position is kept
-- ARGV[3]   version of the message, or "version:chain" (position.lua)
-- ARGV[4]   mode: '0' may jump ahead of the position; '1' strict: refuse a
--           version that does not follow the position (the caller pipelines
--           consecutive versions and must not skip one whose call failed);
--           'R' repair (whole tag only): set the position whatever it is
-- ARGV[5]   the caller's pipeline token when a whole tag of the channel
--           comes before this one in it, or this one may be deferred (whole
--           tag, or with reference sets) with more of the channel after it;
--           else ''
-- ARGV[6]   how many of the last KEYS are reference sets ('0' or absent for
--           none): an entity-level invalidation deletes every member of each
--           (drops them from the tag's sets too) and the sets; above the
--           cardinality guard together it is refused like a large tag (the
--           caller chunks the reference sets)
-- ARGV[7]   '1' (with reference sets only): plain, every member of KEYS[1]
--           goes too, and the set (counted in the guard); else '0' or absent
-- Returns {status, keys deleted}; status is SUCCESS, EMPTY_TAG_SET,
-- TAG_CARDINALITY_EXCEEDED (nothing done, position unchanged; with a token
-- the channel is marked), DUPLICATE (the position is already at or past
-- this version; nothing done), GAP (strict, and the position is behind the
-- previous version; nothing done) or WAIT (an earlier whole tag of the
-- channel in the pipeline was deferred; nothing done).
local epoch, version, mode, token = ARGV[2], version_of(ARGV[3]), ARGV[4], ARGV[5]
if epoch ~= '' then
  if batch_waits(KEYS[3], token) then
    return {'WAIT', 0}
  end
  local e, v = read_position(KEYS[2])
  local verdict = position_rule(e, v, epoch, version, mode)
  if verdict == 'D' then
    return {'DUPLICATE', 0}
  elseif verdict == 'G' then
    return {'GAP', 0}
  end
end

local function unlink(list, first, last)
  local n = 0
  for i = first, last, MAX_UNPACK do
    n = n + redis.call('UNLINK', unpack(list, i, math.min(i + MAX_UNPACK - 1, last)))
  end
  return n
end

local function srem(set, list, first, last)
  for i = first, last, MAX_UNPACK do
    redis.call('SREM', set, unpack(list, i, math.min(i + MAX_UNPACK - 1, last)))
  end
end

-- drop deletes every member of a set and the set.
local function drop(set)
  local members = redis.call('SMEMBERS', set)
  if #members == 0 then
    return 0
  end
  local n = unlink(members, 1, #members)
  redis.call('UNLINK', set)
  return n
end

local function refuse(n)
  if epoch ~= '' then
    batch_defer(KEYS[3], token)
  end
  return {'TAG_CARDINALITY_EXCEEDED', n}
end

local nrefs = tonumber(ARGV[6] or '0')
local plain = nrefs > 0 and ARGV[7] == '1'
local status, deleted = 'SUCCESS', 0
local last = #KEYS - nrefs -- the last cache key
if nrefs > 0 then
  local total = 0
  for i = last + 1, #KEYS do
    total = total + redis.call('SCARD', KEYS[i])
  end
  if plain then
    total = total + redis.call('SCARD', KEYS[1])
  end
  if total > tonumber(ARGV[1]) then
    return refuse(total)
  end
end
if last >= 5 then
  deleted = unlink(KEYS, 5, last)
  srem(KEYS[1], KEYS, 5, last)
  srem(KEYS[4], KEYS, 5, last)
end
if nrefs > 0 then
  for i = last + 1, #KEYS do
    local members = redis.call('SMEMBERS', KEYS[i])
    if #members > 0 then
      deleted = deleted + unlink(members, 1, #members)
      srem(KEYS[4], members, 1, #members)
      redis.call('UNLINK', KEYS[i])
    end
  end
  if plain then
    deleted = deleted + drop(KEYS[1])
  end
elseif last < 5 then
  local n = redis.call('SCARD', KEYS[1]) + redis.call('SCARD', KEYS[4])
  if n > tonumber(ARGV[1]) then
    return refuse(n)
  end
  if n == 0 then
    status = 'EMPTY_TAG_SET'
  else
    deleted = drop(KEYS[1]) + drop(KEYS[4])
  end
end
if epoch ~= '' then
  redis.call('SET', KEYS[2], epoch .. ':' .. ARGV[3]) -- as given: Lua would format a large version as 1e+18
end
return {status, deleted}
