-- The position rule shared by invalidate.lua and invalidate_keys.lua; lua.go
-- prepends this file to both (with MAX_UNPACK before it), so the rule lives
-- in one place. It defines functions only and reads no KEYS or ARGV.
--
-- A position is stored as "epoch:version:chain", or "epoch:version" (written
-- before positions carried the channel's chain, and for a Lost position;
-- docs/protocol.md 5.2). The scripts compare epochs and versions only; the
-- chain is stored for the subscriber's checks. An invalidation carries its
-- channel's epoch, its version argument ("version" or "version:chain",
-- stored after the epoch as given: see version_of) and a mode: '0' may jump ahead of the
-- position (recovery), '1' is strict (the caller pipelines consecutive
-- versions and must not skip one whose call failed, and the version must
-- follow the stored position exactly), 'R' is a repair (set
-- the position whatever it is, even ahead in the same epoch).

-- read_position returns the stored epoch and version, or nil. A position
-- key of another type (an operator's mistake) is no position: it is deleted,
-- so the rule treats the channel as one with none and the position is
-- written again; left, it failed every invalidation of its channel.
local function read_position(key)
  local pos = redis.pcall('GET', key)
  if type(pos) == 'table' and pos.err then
    redis.call('DEL', key)
    return nil, nil
  end
  if not pos then
    return nil, nil
  end
  local e, v = string.match(pos, '^([^:]*):(%d+):%x+$')
  if not e then
    e, v = string.match(pos, '^(.*):(%d+)$')
  end
  return e, tonumber(v)
end

-- version_of reads an invalidation's version argument, "version" or
-- "version:chain", as a number (nil when it is neither).
local function version_of(arg)
  return tonumber(string.match(arg, '^(%d+)$') or string.match(arg, '^(%d+):%x+$'))
end

-- position_rule says what the position (e, v) makes of an invalidation (the
-- strict apply of docs/protocol.md 5.2, where the recovery rules are stated):
-- 'D' (DUPLICATE: the position is at or past its version in the same epoch),
-- 'G' (GAP: strict, and the position is not its previous version — behind,
-- in another epoch, or absent for a version other than 1: a cache that went
-- back is never moved past what it lost), or nil (apply). The same rule as
-- recovery.Follows in Go.
local function position_rule(e, v, epoch, version, mode)
  if mode == 'R' then
    return nil
  end
  if e == epoch and v >= version then
    return 'D'
  end
  if mode == '1' and not ((e == epoch and v == version - 1) or (e == nil and version == 1)) then
    return 'G'
  end
  return nil
end

-- The order of a batch. A caller that pipelines a channel's invalidations
-- passes a token (unique to that pipeline) with each one that a whole tag
-- of the channel comes before. A whole tag above the cardinality guard is
-- deferred (the caller takes it down in chunks after the pipeline): it marks
-- the channel with the token, and every later call of the channel in the
-- same pipeline finds the mark and waits ('W', nothing done) instead of
-- overtaking it. The caller runs them again, with another token, once the
-- deferred one is done.

-- batch_waits says whether this pipeline's token marks the channel.
local function batch_waits(mark, token)
  return token ~= '' and redis.call('SISMEMBER', mark, token) == 1
end

-- batch_defer marks the channel for the rest of this pipeline. The mark is
-- a set of tokens, so concurrent pipelines do not clear each other's; the
-- caller removes its token when the deferred tag is done, and the set
-- expires a minute after its last mark in any case.
local function batch_defer(mark, token)
  if token ~= '' then
    redis.call('SADD', mark, token)
    redis.call('PEXPIRE', mark, 60000)
  end
end
