-- Account actions of one batch (stream_detector/worker/account_store.py), idempotent.
-- KEYS: per account, its state HASH and its ring LIST (both hash-tagged by the account).
-- ARGV: ttl_s, ring, judge_every_min, min_actions, then per account: n, then n entries
-- (Action.key(): "<minute>|..."). An entry already in the ring is the same action applied again
-- (a replay): nothing changes. Only an entry no later than the account's last minute can be one,
-- so only those are looked up in the ring (LPOS is linear in it).
-- The state keeps, per day of the last 8 (field d<day % 8> = "<day>:<24-bit mask>"), the hours
-- with an action, the first and last minute, the actions seen (n) and when it was last judged
-- (j), and whether it stands flagged (x, set by the judgement). Returns two lists of 1-based
-- positions: the accounts due for a judgement, and the accounts that stand flagged (their
-- actions count as flagged in their videos' hours).
local ttl, ring, every, min_actions = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local due = {}
local flagged = {}
local a = 5
for k = 1, #KEYS, 2 do
  local st, rk = KEYS[k], KEYS[k + 1]
  local n = tonumber(ARGV[a])
  a = a + 1
  local last = tonumber(redis.call('HGET', st, 'last') or '0')
  local first = tonumber(redis.call('HGET', st, 'first') or '0')
  local added = 0
  local masks = {}
  for _ = 1, n do
    local entry = ARGV[a]
    local minute = tonumber(string.match(entry, '^(%d+)'))
    a = a + 1
    if minute > last or not redis.call('LPOS', rk, entry) then
      redis.call('RPUSH', rk, entry)
      added = added + 1
      local hour = math.floor(minute / 60)
      local day = math.floor(hour / 24)
      masks[day] = bit.bor(masks[day] or 0, bit.lshift(1, hour % 24))
      if minute > last then last = minute end
      if first == 0 or minute < first then first = minute end
    end
  end
  for day, bits in pairs(masks) do
    local field = 'd' .. (day % 8)
    local cur = redis.call('HGET', st, field)
    local mask = bits
    if cur then
      local d0, m0 = string.match(cur, '(%d+):(%d+)')
      if tonumber(d0) == day then mask = bit.bor(mask, tonumber(m0)) end
      if tonumber(d0) > day then mask = nil end
    end
    if mask then redis.call('HSET', st, field, day .. ':' .. mask) end
  end
  if added > 0 and redis.call('HGET', st, 'x') == '1' then
    flagged[#flagged + 1] = (k + 1) / 2
  end
  if added > 0 then
    redis.call('LTRIM', rk, -ring, -1)
    local count = redis.call('HINCRBY', st, 'n', added)
    redis.call('HSET', st, 'last', last, 'first', first)
    redis.call('EXPIRE', st, ttl)
    redis.call('EXPIRE', rk, ttl)
    local judged = tonumber(redis.call('HGET', st, 'j') or '-1000000000')
    if count >= min_actions and last - judged >= every then
      redis.call('HSET', st, 'j', last)
      due[#due + 1] = (k + 1) / 2
    end
  end
end
return {due, flagged}
