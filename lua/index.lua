-- Record tenants in a service's position index before their first position
-- is written (tagstore.IndexTenants). A script rather than an SADD so that
-- it runs on a full cache Redis (lua.go prepends the allow-oom flag): an
-- SADD is refused with OOM there, and the invalidation it comes before
-- would never run.
-- KEYS[1]  the position index routerd:positions:<service>
-- ARGV     the tenants
-- Returns the number of tenants new in the index.
local added = 0
for i = 1, #ARGV, MAX_UNPACK do
  added = added + redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + MAX_UNPACK - 1, #ARGV)))
end
return added
