-- Remove from a tag set the members whose cache keys no longer exist
-- (expired or deleted by other means).
-- KEYS[1]  tag set
-- ARGV     members to check (at most lua.MaxUnpack, from SSCAN)
-- Returns the number of members removed.
local removed = 0
for i = 1, #ARGV do
  if redis.call('EXISTS', ARGV[i]) == 0 then
    removed = removed + redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return removed
