-- The marks of agents on a service's cache Redis (internal/cli/agentout.go):
-- the clean mark an agent with --deliver leaves when it stops with every
-- delivery made, and the presence of an agent without --deliver. A script
-- rather than a SET or an SADD so that it runs on a full cache Redis (lua.go
-- prepends the allow-oom flag): refused with OOM there, a clean stop would
-- be taken for an unclean one (a needless reset), and a presence not
-- recorded would let an agent with --deliver mark the cache clean while
-- another moves its positions (invalidations skipped).
-- KEYS[1]  routerd:delivery:<service> (mark) or
--          routerd:delivery-plain:<service> (presence)
-- ARGV[1]  'mark' or 'presence'
-- ARGV[2]  the mark's value, or the presence's member to add
-- ARGV[3]  presence: the member it replaces ('' for none)
-- Returns 'OK' for a mark, the number of members added for a presence.
if ARGV[1] == 'mark' then
  return redis.call('SET', KEYS[1], ARGV[2])
end
local added = redis.call('SADD', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then
  redis.call('SREM', KEYS[1], ARGV[3])
end
return added
