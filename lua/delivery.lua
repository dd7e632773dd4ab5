-- The marks of agents on a service's cache Redis (internal/cli/agentout.go):
-- the clean mark an agent with --deliver leaves when it stops with every
-- delivery made (its token while it runs, which any other subscriber
-- starting takes away), and the presence of an agent without --deliver. A script
-- rather than a SET or an SADD so that it runs on a full cache Redis (lua.go
-- prepends the allow-oom flag): refused with OOM there, a clean stop would
-- be taken for an unclean one (a needless reset), and a presence not
-- recorded would let an agent with --deliver mark the cache clean while
-- another moves its positions (invalidations skipped).
-- KEYS[1]  routerd:delivery:<service> (mark) or
--          routerd:delivery-plain:<service> (presence)
-- ARGV[1]  'take', 'mark' or 'presence'
-- ARGV[2]  take: the running agent's token, which the mark holds while it
--          runs (written when the mark holds anything else: at the start,
--          and each second after, lua.DeliveryTakeRequest); mark: the clean value; presence: the member to add
-- ARGV[3]  mark: the token the agent's take wrote (the mark is left only
--          while it still holds it: another subscriber that started since
--          took it away; else the token is written again, not clean);
--          presence: the member it replaces ('' for none)
-- Returns the mark's value before for a take (nil for none), 1 for a mark
-- left and 0 for one not, the number of members added for a presence.
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
local added = redis.call('SADD', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then
  redis.call('SREM', KEYS[1], ARGV[3])
end
return added
