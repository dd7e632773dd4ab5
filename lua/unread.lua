-- Count, and take out of the consumer group's lag, the entries of an
-- ingress stream deleted before the group read them (a client's XTRIM or
-- XDEL, a publisher's XADD … MAXLEN): Redis keeps counting them in the
-- group's lag (entries-read against entries-added), although there is
-- nothing left to read.
-- KEYS[1]  the stream
-- ARGV[1]  the consumer group
-- ARGV[2]  most entries left to read one call counts; 0: none (the head
--          check alone, what a router runs before each read of a backlog)
-- Returns {lost, before}: lost is how many entries were deleted unread (0
-- when none were, or when this call cannot tell: below), before an id they
-- were added before (the first entry left to read; the group's last
-- delivered id when none is left). When lost is above 0 the group's
-- entries-read counter is raised by lost (XGROUP SETID to the same last id,
-- with ENTRIESREAD), so its lag is what is left to read and the same loss
-- is not counted again.
--
-- The lag is what is left to read plus what was deleted unread:
--  * nothing left to read: the lag is all lost;
--  * a lag of at most ARGV[2]: the entries left are counted (at most that
--    many, inside Redis), the rest of the lag is lost;
--  * else the head check, which counts no entry (XINFO STREAM copies the
--    first and last entries, nothing more): a trim deleted unread
--    entries when the stream's first entry is after the group's last
--    delivered one (a trim deletes from the head: everything the group
--    read went too). Then, with no entry deleted from inside the stream
--    (max-deleted-entry-id before the first entry), every entry deleted
--    was added before the first one, and what the group's entries-read
--    falls short of entries-added - length is lost. The next read of the
--    group moves its last delivered id past the first entry, after which
--    only the two cases above can tell: a router runs this check before
--    each read of a backlog, in the same pipeline (router/bounded.go).
-- A call that cannot tell (a larger lag once the group read past the
-- trim, an XDEL inside the stream, a user without XINFO STREAM) counts
-- nothing: a later one does, at the latest once the group has read
-- everything left.
local function field(reply, name)
  for i = 1, #reply, 2 do
    if reply[i] == name then
      return reply[i + 1]
    end
  end
end
-- less compares two stream ids, ms-seq, as numbers of any length.
local function less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if #am ~= #bm then
    return #am < #bm
  end
  if am ~= bm then
    return am < bm
  end
  if #as ~= #bs then
    return #as < #bs
  end
  return as < bs
end
local most = tonumber(ARGV[2])
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  if field(g, 'name') == ARGV[1] then
    local last, read, lag = field(g, 'last-delivered-id'), field(g, 'entries-read'), field(g, 'lag')
    if type(read) ~= 'number' or type(lag) ~= 'number' or lag <= 0 then
      return {0, last}
    end
    local lost, before
    if most > 0 then
      local left = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', lag <= most and lag + 1 or 1)
      if #left == 0 then
        lost, before = lag, last
      elseif lag <= most then
        lost, before = lag - #left, left[1][1]
      end
    end
    if not lost then
      local info = redis.pcall('XINFO', 'STREAM', KEYS[1])
      if info.err then
        return {0, last} -- an older ACL: counted once the group catches up
      end
      local first, deleted = field(info, 'recorded-first-entry-id'), field(info, 'max-deleted-entry-id')
      if field(info, 'length') == 0 or not less(last, first) or deleted ~= '0-0' and not less(deleted, first) then
        return {0, last}
      end
      lost, before = field(info, 'entries-added') - field(info, 'length') - read, first
    end
    if lost <= 0 then
      return {0, last}
    end
    lost = math.min(lost, lag)
    redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', read + lost)
    return {lost, before}
  end
end
return {0, ''}
