-- Register tenants in the bus's tenant registry and announce each one the
-- registry did not hold, in one step: a registry entry and its announcement
-- exist together or not at all (a router that failed in between left an
-- entry that made every later SADD answer 0, and nobody announced).
-- KEYS[1]  <prefix>:tenants, the registry set; also the announcement
--          channel's name (so on a cluster both are in one slot)
-- ARGV[1]  'PUBLISH' or 'SPUBLISH'
-- ARGV[2…] the tenants
-- Returns the number announced. When an announcement fails, its tenant is
-- taken out of the registry again and the call answers the error.
local cmd = ARGV[1]
local announced = 0
for i = 2, #ARGV do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    local r = redis.pcall(cmd, KEYS[1], ARGV[i])
    if type(r) == 'table' and r.err then
      redis.call('SREM', KEYS[1], ARGV[i])
      return redis.error_reply(r.err)
    end
    announced = announced + 1
  end
end
return announced
