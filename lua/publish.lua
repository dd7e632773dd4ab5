-- Publish invalidation messages on one or more channels, each idempotently
-- per event id, in one call. Needs MAX_UNPACK and bucket.lua before it
-- (lua.go prepends them).
-- Every channel takes three keys:
-- KEYS[3c-2] {<channel>}:meta     hash: epoch, version, replid, runid, chain,
--                                 restarted ('1': the epoch started where
--                                 the meta was lost and its history or
--                                 event ids were not);
--                                 ('<epoch>:<version>:<chain>', the chain at
--                                 that version: docs/protocol.md 4)
-- KEYS[3c-1] {<channel>}:history  stream of the last messages, entry id = <version>-0
-- KEYS[3c]   {<channel>}:events   sorted set: event id -> version, for the versions the history keeps
-- ARGV[1]    'PUBLISH' or 'SPUBLISH'
-- ARGV[2]    epoch to start on a channel that has none (random hex from the caller)
-- Then, for each channel in KEYS order:
--   channel name, history length to keep, history TTL in milliseconds (0:
--   none; else the history and the event ids expire that long after the
--   channel's last message, the meta never), the channel's bucket: rate per
--   second (above 0: the matrix's minimum is 0.1) and burst, force ('1':
--   publish even without a token, taking one on credit), number of
--   messages m;
--   and for each of its m messages, in order:
--     number of event ids k (1..1000; more than one when events were merged),
--     the k event ids (the first is the message's event),
--     message JSON without epoch and version, starting with ',' and without the closing '}'
-- Returns, for each message in order, its version and a status:
--   0  published (the version is its own);
--   1  every event id of it was already published on the channel: nothing is
--      sent again (the version is the one its first id was published with);
--   2  some of its event ids were published before and others not (a
--      redelivery that grouped events otherwise): nothing is sent or
--      recorded, and k flags follow, 1 for each id published before; the
--      caller sends the message again without those events and their keys;
--   3  the channel's bucket has no token: nothing is sent or recorded, and
--      the number in place of the version is the milliseconds until it
--      has one. The caller holds the message (merging what follows into
--      it) and sends it again then;
--   4  an earlier message of its channel in this call answered 2: nothing
--      is sent or recorded (the version is 0), so that the caller, sending
--      that one's rest again first, keeps the channel's order.
-- The bucket (fields tokens and at of the meta, at in microseconds of the
-- server's TIME) is shared by every router: it is the channel's one budget.
-- Redis does not undo a script's writes when a command in it fails. The
-- commands that can fail once a message's event ids are recorded (XADD,
-- PUBLISH) are called with pcall, and a failure stops the call as if it had
-- ended cleanly before: the failed message's ids are taken back (a retry
-- must not find them and take the message for sent), and the meta says
-- what was published (the next version must not repeat one in the
-- history). The call then answers the command's error.
local function save(metaKey, version, tokens, now, chain)
  redis.call('HSET', metaKey, 'version', version, 'tokens', tokens, 'at', now, 'chain', chain)
end

-- The channel's chain: a digest of every message of the epoch, in order,
-- which a subscriber computes from what it applied (recovery.Link) and
-- compares with the meta's, so a forged message it applied in place of the
-- channel's own shows. '' before version 1.
local function link(prev, msg)
  return string.sub(redis.sha1hex(prev .. redis.sha1hex(msg)), 1, 16)
end

-- chain_at returns the chain at version of epoch from the meta's field,
-- caught up over the history when an older router published since without
-- keeping it; else a new chain starts here (from ''), which subscribers
-- that knew the old one take for a divergence (a whole tag, safe).
local function chain_at(field, epoch, version, historyKey)
  if version == 0 then
    return ''
  end
  local e, v, c = string.match(field or '', '^([^:]*):(%d+):(%x+)$')
  v = tonumber(v)
  if e ~= epoch or not v or v > version or version - v > MAX_UNPACK then
    return ''
  end
  if v == version then
    return c
  end
  -- pcall: a router user made before chains may lack XRANGE (security.md).
  local entries = redis.pcall('XRANGE', historyKey, string.format('%d-0', v + 1), string.format('%d-0', version))
  if entries.err or #entries ~= version - v then
    return ''
  end
  for i = 1, #entries do
    local msg
    local fields = entries[i][2]
    for j = 1, #fields, 2 do
      if fields[j] == HISTORY_FIELD then
        msg = fields[j + 1]
      end
    end
    if entries[i][1] ~= string.format('%d-0', v + i) or not msg then
      return ''
    end
    c = link(c, msg)
  end
  return c
end

-- chain_field is the meta's chain field: where the chain stands.
local function chain_field(epoch, version, chain)
  return epoch .. ':' .. string.format('%d', version) .. ':' .. chain
end

local cmd, fresh = ARGV[1], ARGV[2]
-- The replication id of this server, read here and not taken from the
-- caller: a server restarted from an older snapshot (or a promoted replica)
-- has a new one at once, whereas a caller's could be from before.
local repl = redis.call('INFO', 'replication')
local replid = string.match(repl, 'master_replid:(%x+)') or ''
-- The server's run_id, and whether it ever followed another master since
-- it started (master_replid2 is all zeros until then): a meta this very
-- process wrote, with no master followed since, is of its own history even
-- when its replication id changed — which it does when its first replica
-- attaches (or the first after its backlog was freed): no restart, no loss.
-- The run_id is read only when a meta needs it (INFO server is not free,
-- and most calls find every meta at the server's replication id).
local followed = string.find(string.match(repl, 'master_replid2:(%x+)') or '', '[^0]') ~= nil
local run
local function runid()
  if not run then
    run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
  end
  return run
end
local out = {}
local a = 3
local now = bucket_now()
for c = 1, #KEYS, 3 do
  local metaKey, historyKey, eventsKey = KEYS[c], KEYS[c + 1], KEYS[c + 2]
  local channel, keep, ttl = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local rate, burst, force, m = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), ARGV[a + 5] == '1', tonumber(ARGV[a + 6])
  a = a + 7
  local meta = redis.call('HMGET', metaKey, 'epoch', 'replid', 'version', 'tokens', 'at', 'chain', 'runid')
  local epoch, version = meta[1], tonumber(meta[3])
  -- The bucket expires with its meta (bucket.lua).
  local tokens = bucket_tokens(meta[4], meta[5], now, rate, burst)
  if epoch and replid ~= '' and meta[2] and meta[2] ~= replid and not (meta[7] and not followed and meta[7] == runid()) then
    -- The meta was written under another master's history: this is a
    -- promoted replica, which may lack the last versions (or a server
    -- restarted, or one that took another's data with REPLICAOF). Versions
    -- could repeat, so start a new epoch; subscribers treat it as a gap.
    epoch = false
  end
  if not epoch or not version then
    -- No meta: the channel is new, or Redis lost it. Start a new epoch and
    -- drop whatever history and event ids survived from the old one. When
    -- some did, the meta alone was lost (evicted, deleted, expired) while
    -- the bus kept the rest: the new epoch says so (restarted), and a
    -- subscriber that holds no position on the channel cannot take it for
    -- all the channel published.
    epoch, version = fresh, 0
    local restarted = redis.call('DEL', historyKey, eventsKey) > 0
    redis.call('HSET', metaKey, 'epoch', epoch, 'version', 0, 'replid', replid, 'runid', runid())
    if restarted then
      redis.call('HSET', metaKey, 'restarted', '1')
    end
  elseif replid ~= '' and (meta[2] ~= replid or not meta[7]) then
    redis.call('HSET', metaKey, 'replid', replid, 'runid', runid())
  end
  local chain = chain_at(meta[6], epoch, version, historyKey)
  local published, stopped = false, false
  for _ = 1, m do
    local k = tonumber(ARGV[a])
    local first, last = a + 1, a + k
    local body = ARGV[a + k + 1]
    a = a + k + 2
    -- Idempotency: the ids not seen yet are recorded with the next version;
    -- when none was new, the message was published before.
    -- The score as a string, formatted once: a Lua number passed to
    -- redis.call is formatted with sprintf for each id.
    local score = string.format('%d', version + 1)
    local added
    if k == 1 then
      added = redis.call('ZADD', eventsKey, 'NX', score, ARGV[first])
    else
      added = 0
      local per = MAX_UNPACK / 2 -- ids per ZADD: a score and a member each
      for i = first, last, per do
        local pairs = {}
        local n = 0
        for j = i, math.min(i + per - 1, last) do
          pairs[n + 1] = score
          pairs[n + 2] = ARGV[j]
          n = n + 2
        end
        added = added + redis.call('ZADD', eventsKey, 'NX', unpack(pairs))
      end
    end
    local before = nil
    if added > 0 and added < k then
      -- Some ids were there before this message, or an id repeats in it:
      -- the ids recorded before have a score of at most version.
      before = {}
      local any = false
      for i = first, last, MAX_UNPACK do
        local j = math.min(i + MAX_UNPACK - 1, last)
        local scores = redis.call('ZMSCORE', eventsKey, unpack(ARGV, i, j))
        for x = 1, j - i + 1 do
          if tonumber(scores[x]) == version + 1 then
            before[#before + 1] = 0
          else
            before[#before + 1] = 1
            any = true
          end
        end
      end
      if any then
        -- Undo this message's records: only they have the score version + 1.
        redis.call('ZREMRANGEBYSCORE', eventsKey, version + 1, version + 1)
      else
        before = nil
      end
    end
    if added == 0 then
      out[#out + 1] = tonumber(redis.call('ZSCORE', eventsKey, ARGV[first]))
      out[#out + 1] = 1
    elseif before then
      out[#out + 1] = version
      out[#out + 1] = 2
      for x = 1, #before do
        out[#out + 1] = before[x]
      end
      stopped = true
    elseif stopped then
      redis.call('ZREMRANGEBYSCORE', eventsKey, version + 1, version + 1)
      out[#out + 1] = 0
      out[#out + 1] = 4
    elseif tokens < 1 and not force then
      -- No token: undo this message's records (only they have the score
      -- version + 1) and tell when the bucket has one.
      redis.call('ZREMRANGEBYSCORE', eventsKey, version + 1, version + 1)
      out[#out + 1] = bucket_wait(tokens, rate)
      out[#out + 1] = 3
    else
      local v = tostring(version + 1) -- formatted once (Lua formats numbers with sprintf)
      local msg = '{"epoch":"' .. epoch .. '","version":' .. v .. body .. '}'
      local r = redis.pcall('XADD', historyKey, v .. '-0', HISTORY_FIELD, msg)
      if type(r) == 'table' and r.err then
        redis.call('ZREMRANGEBYSCORE', eventsKey, version + 1, version + 1)
        if published then
          save(metaKey, version, tokens, now, chain_field(epoch, version, chain))
        end
        return redis.error_reply(r.err)
      end
      version = version + 1
      chain = link(chain, msg)
      tokens = tokens - 1
      -- In the history, the message is published whatever PUBLISH answers:
      -- a subscriber that misses it replays it from there.
      r = redis.pcall(cmd, channel, msg)
      if type(r) == 'table' and r.err then
        save(metaKey, version, tokens, now, chain_field(epoch, version, chain))
        return redis.error_reply(r.err)
      end
      out[#out + 1] = version
      out[#out + 1] = 0
      published = true
    end
  end
  if published then
    save(metaKey, version, tokens, now, chain_field(epoch, version, chain))
    redis.call('XTRIM', historyKey, 'MAXLEN', '~', keep)
    -- Event ids are kept for the versions the history keeps: a message may
    -- record many. At most IDS_PER_VERSION times the history's length.
    if version > keep then
      redis.call('ZREMRANGEBYSCORE', eventsKey, '-inf', version - keep)
    end
    local n = redis.call('ZCARD', eventsKey)
    if n > IDS_PER_VERSION * keep then
      redis.call('ZREMRANGEBYRANK', eventsKey, 0, n - IDS_PER_VERSION * keep - 1)
    end
    -- Only recently active channels keep a history: a subscriber whose
    -- channel's history expired finds it does not reach back, and
    -- invalidates the tag whole. (No PERSIST without a TTL: a router's
    -- user may not have it; a TTL taken off ends with the last one set.)
    if ttl > 0 then
      redis.call('PEXPIRE', historyKey, ttl)
      redis.call('PEXPIRE', eventsKey, ttl)
    end
  end
end
return out
