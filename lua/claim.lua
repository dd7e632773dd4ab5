-- Claim pending entries of a consumer group, bounded in bytes as read.lua
-- reads new ones: the entries pending for at least a minimum idle time (and,
-- when a consumer is named, pending for that one), in id order from a start,
-- as many as fit the budget (at least one), with each field name or value
-- above the largest whole cut.
-- KEYS[1]  the stream
-- ARGV[1]  the consumer group
-- ARGV[2]  the consumer that claims
-- ARGV[3]  minimum idle time, in milliseconds
-- ARGV[4]  start: the first id to look at
-- ARGV[5]  most entries
-- ARGV[6]  budget: most bytes of field names and values returned, each
--          weighing its framing too (weight.lua); at least one entry, and
--          one heavier than a whole read comes back as a stub (weight.lua)
-- ARGV[7]  largest field name or value returned whole, in bytes; a larger
--          one is cut
-- ARGV[8]  bytes kept of a name or value that is cut
-- ARGV[9]  the consumer whose pending entries are claimed, '' for any: the
--          claiming consumer itself (its own, after a restart, or handed to
--          it: claimed whatever their idle time), or a router's that went
--          silent (router.Options.DeadAfter)
-- Returns {next, entries, cut, deleted}: next is the start of the next call
-- ("0-0" when every pending entry was looked at), entries and cut as
-- read.lua returns them. An entry deleted from the stream while pending (a
-- client's XDEL, or a trim below it) is acknowledged: nothing is left to
-- route. deleted is how many this call acknowledged so (XACK's count, so an
-- entry another claim acknowledged first is not counted twice): they are
-- lost, and the router counts them.
local group, consumer = ARGV[1], ARGV[2]
local idle, start, count, budget = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local whole, keep, of = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local own = of == consumer
local args = {'XPENDING', KEYS[1], group, 'IDLE', idle, start, '+', count}
if of ~= '' then
  args[#args + 1] = of
end
local pending = redis.call(unpack(args))
local ids, total, nextID = {}, 0, '0-0'
local weighs = {} -- by id
local deleted = 0
for k, p in ipairs(pending) do
  local e = redis.call('XRANGE', KEYS[1], p[1], p[1])[1]
  if not e then
    deleted = deleted + redis.call('XACK', KEYS[1], group, p[1])
  else
    local size = weight(e[2], whole, keep) -- a cut name's note not counted
    if #ids > 0 and total + size > budget then
      nextID = p[1]
      break
    end
    ids[#ids + 1], total = p[1], total + size
    weighs[p[1]] = size
  end
  if k == #pending and #pending == count then
    nextID = '(' .. p[1] -- more may be pending after the last one looked at
  end
end
if #ids == 0 then
  return {nextID, {}, {}, deleted}
end
local entries = redis.call('XCLAIM', KEYS[1], group, consumer, own and 0 or idle, unpack(ids))
local cut = {}
for i, e in ipairs(entries) do
  local fields = e[2]
  if (weighs[e[1]] or 0) > heavy(budget, whole) then
    -- Heavier than a whole read (the first one claimed): a stub
    -- (weight.lua).
    e[2], fields = {'', ''}, {}
    cut[#cut + 1] = i
    cut[#cut + 1] = ''
    cut[#cut + 1] = weighs[e[1]]
  end
  for j = 1, #fields, 2 do
    if #fields[j] > whole then
      fields[j] = string.sub(fields[j], 1, keep) .. '… [cut when read: the name is ' .. #fields[j] .. ' bytes]'
    end
    if #fields[j + 1] > whole then
      cut[#cut + 1] = i
      cut[#cut + 1] = fields[j]
      cut[#cut + 1] = #fields[j + 1]
      fields[j + 1] = string.sub(fields[j + 1], 1, keep)
    end
  end
end
return {nextID, entries, cut, deleted}
