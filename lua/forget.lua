-- Remove from an ingress stream's consumer group the consumers of routers
-- that went away: idle at least ARGV[3] milliseconds and holding nothing.
-- The check and XGROUP DELCONSUMER are one step: DELCONSUMER deletes the
-- consumer's pending entries from the group (never claimed, never routed),
-- so a consumer that read between a check and a delete made apart (a
-- router paused past the idle time, resuming) would lose what it read.
-- A consumer holding entries is left for the claim to empty.
-- KEYS[1]  the stream
-- ARGV[1]  the consumer group
-- ARGV[2]  a consumer kept whatever its idle time (the caller's own)
-- ARGV[3]  the idle time, in milliseconds, from which a consumer holding
--          nothing is removed
-- Returns {name, idle, …}: each consumer removed and its idle time in
-- milliseconds.
local function field(reply, name)
  for i = 1, #reply, 2 do
    if reply[i] == name then
      return reply[i + 1]
    end
  end
end
local least = tonumber(ARGV[3])
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle = field(c, 'name'), field(c, 'pending'), field(c, 'idle')
  if name ~= ARGV[2] and pending == 0 and type(idle) == 'number' and idle >= least then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed[#removed + 1] = name
    removed[#removed + 1] = idle
  end
end
return removed
