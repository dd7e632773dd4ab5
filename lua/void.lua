-- Voiding leases (docs/protocol.md#leases), shared by invalidate.lua and
-- invalidate_keys.lua; lua.go prepends this file to both, with
-- LEASE_SEGMENT and MAX_UNPACK before it. It defines functions only.
--
-- A lease ({tenant:<t>}:lease:<cache key>) lets one Fetch fill a missing
-- key, and set.lua fills only while the lease still holds the fill's token.
-- An invalidation that covers the key deletes the lease in the same call
-- that deletes the key: the value loaded before it is then never cached
-- after it. Whole-tag and entity-level invalidations do that without
-- anything here: lease.lua registers the lease in the sets its value will
-- be registered in, and they delete every member of those sets. A
-- key-level invalidation names its keys only, so it deletes their leases
-- by name.

-- lease_prefix is "{tenant:<t>}:lease:" for a set in the tenant's slot
-- (its tag set).
local function lease_prefix(set)
  return string.match(set, '^(%b{})') .. ':' .. LEASE_SEGMENT .. ':'
end

-- void_leases deletes the leases of the cache keys list[first..last] (at
-- most MAX_UNPACK of them).
local function void_leases(prefix, list, first, last)
  local leases = {}
  for i = first, last do
    leases[#leases + 1] = prefix .. list[i]
  end
  if #leases > 0 then
    redis.call('UNLINK', unpack(leases))
  end
end
