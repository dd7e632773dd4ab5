-- The marks of agents on a service's cache Redis (internal/cli/agentout.go):
-- the clean mark an agent with --deliver leaves when it stops with every
-- delivery made (its token while it runs, which any other subscriber
-- starting takes away), and the presence of an agent without --deliver. A script
-- rather than a SET or an SADD so that it runs on a full cache Redis (lua.go
-- prepends the allow-oom flag): refused with OOM there, a clean stop would
-- be taken for an unclean one (a needless reset), and a presence not
-- recorded would let an agent with --deliver mark the cache clean while
-- another moves its positions (invalidations skipped).
-- The presence's expiry is judged on this Redis's clock (TIME), both when
-- it is written and when it is counted, never on the hosts' (which may
-- disagree by more than its lifetime: a live presence counted as expired
-- lets the agent mark the cache clean). Where the user may not run TIME
-- (an ACL written by an earlier routerd acl), the caller's clock is used,
-- as before.
-- KEYS[1]  routerd:delivery:<service> (mark) or
--          routerd:delivery-plain:<service> (presence, count)
-- ARGV[1]  'take', 'mark', 'presence' or 'count'
-- ARGV[2]  take: the running agent's token, which the mark holds while it
--          runs (written when the mark holds anything else: at the start,
--          and each second after, lua.DeliveryTakeRequest); mark: the clean
--          value; presence: the member to add when TIME is refused
--          ("<id>@<unix seconds it expires>" on the caller's clock);
--          count: the caller's unix seconds, used when TIME is refused
-- ARGV[3]  mark: the token the agent's take wrote (the mark is left only
--          while it still holds it: another subscriber that started since
--          took it away; else the token is written again, not clean);
--          presence: the member it replaces ('' for none)
-- ARGV[4]  presence: the member's id
-- ARGV[5]  presence: the seconds it counts for
-- Returns the mark's value before for a take (nil for none), 1 for a mark
-- left and 0 for one not, the member written for a presence, the number
-- of members not expired for a count (the expired ones taken away; a
-- member without a number after its last '@' never expires).
local function servertime()
  local t = redis.pcall('TIME')
  if type(t) == 'table' and t[1] then
    return tonumber(t[1])
  end
  return nil -- refused (NOPERM)
end
if ARGV[1] == 'take' then
  local was = redis.call('GET', KEYS[1])
  if was ~= ARGV[2] then
    redis.call('SET', KEYS[1], ARGV[2])
  end
  return was
end
if ARGV[1] == 'mark' then
  if redis.call('GET', KEYS[1]) ~= ARGV[3] then
    -- Not left clean: nor a clean mark that is not this run's (the cache
    -- restored from a snapshot taken after an earlier clean stop).
    redis.call('SET', KEYS[1], ARGV[3])
    return 0
  end
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
if ARGV[1] == 'count' then
  local t = servertime() or tonumber(ARGV[2])
  local n = 0
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    local exp = tonumber(string.match(m, '@(%d+)$') or '')
    if exp and exp < t then
      redis.call('SREM', KEYS[1], m)
    else
      n = n + 1
    end
  end
  return n
end
local member = ARGV[2]
local t = servertime()
if t then
  member = ARGV[4] .. '@' .. (t + tonumber(ARGV[5]))
end
redis.call('SADD', KEYS[1], member)
if ARGV[3] ~= '' and ARGV[3] ~= member then
  redis.call('SREM', KEYS[1], ARGV[3])
end
return member
