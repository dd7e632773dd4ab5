-- What an entry weighs against a read's budget (read.lua, claim.lua).
-- FIELD_FRAMING is what each field name or value weighs beyond its bytes
-- (its framing in the reply), so that an entry of many empty fields weighs
-- too. An entry heavier than a whole read may hold (heavy) comes back as a
-- stub: one empty field name with an empty value, and a cut noting its
-- weight under the field name '' — it is refused as too large without
-- being held.
local FIELD_FRAMING = 8

-- heavy is what no entry may weigh and be returned whole: the budget, or,
-- when larger, the largest value returned whole and 64 KiB for the entry's
-- other fields (an event of the largest size is read whatever the budget).
local function heavy(budget, whole)
  return math.max(budget, whole + 65536)
end

-- weight is what fields weigh: each name or value its length (one above
-- whole: keep, what is left of it once cut) and its framing.
local function weight(fields, whole, keep)
  local w = 0
  for i = 1, #fields do
    local n = #fields[i]
    w = w + (n > whole and keep or n) + FIELD_FRAMING
  end
  return w
end
