-- Record the bus identity a service's complete check was made against
-- (tagstore.RecordGeneration). A script rather than a SET so that it runs on
-- a full cache Redis (lua.go prepends the allow-oom flag): a SET is refused
-- with OOM there, the check fails, and every check after it takes the bus
-- for one that lost its data again.
-- KEYS[1]  routerd:generation:<service>
-- ARGV[1]  the identity
-- Returns 'OK'.
return redis.call('SET', KEYS[1], ARGV[1])
