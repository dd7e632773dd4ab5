-- Count, and take out of the consumer group's lag, the entries of an
-- ingress stream deleted before the group read them (a client's XTRIM or
-- XDEL): Redis keeps counting them in the group's lag (entries-read
-- against entries-added), although there is nothing left to read.
-- KEYS[1]  the stream
-- ARGV[1]  the consumer group
-- Returns {lost, last}: lost is how many entries were deleted unread (0 when
-- the group has entries left to read, or its entries-read counter is not
-- known), last the group's last delivered id. When lost is above 0 the
-- group's entries-read counter is set to the entries added to the stream
-- (XGROUP SETID to the same last id, with ENTRIESREAD), so its lag is 0
-- and the same loss is not counted again.
local function field(reply, name)
  for i = 1, #reply, 2 do
    if reply[i] == name then
      return reply[i + 1]
    end
  end
end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  if field(g, 'name') == ARGV[1] then
    local last, read, lag = field(g, 'last-delivered-id'), field(g, 'entries-read'), field(g, 'lag')
    if type(read) ~= 'number' or type(lag) ~= 'number' or lag <= 0 then
      return {0, last}
    end
    if #redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1) > 0 then
      return {0, last} -- entries left to read: the lag is theirs
    end
    redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', read + lag)
    return {lag, last}
  end
end
return {0, ''}
