-- Account actions of one batch (stream_detector/worker/account_store.py), idempotent.
-- KEYS: per account, its state HASH and its ring LIST (both hash-tagged by the account).
-- ARGV: ttl_s, ring, judge_every_min, min_actions, refresh (the worker's clock in periods of
-- at most an hour and a quarter of the TTL),
-- then per account: n, then n entries
-- (Action.key(): "<minute>|..."). An entry already in the ring is the same action applied again
-- (a replay): nothing changes. Only an entry no later than the account's last minute can be one,
-- so only those are looked up in the ring (LPOS is linear in it).
-- The state keeps, per day of the last 8 (field d<day % 8> = "<day>:<24-bit mask>"), the hours
-- with an action, the first and last minute, the actions seen (n) and when it was last judged
-- (j), whether it stands flagged (x, set by the judgement) and the clock period its keys' TTL
-- was last refreshed (e: once a period is enough). Returns two lists of 1-based
-- positions: the accounts due for a judgement, and the accounts that stand flagged (their
-- actions count as flagged in their videos' hours).
local ttl, ring, every, min_actions = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local refresh = ARGV[5]
local due = {}
local flagged = {}
local a = 6
-- Per account one HMGET (the state and the day fields its entries touch), RPUSH and HSET (LPOS
-- only for an entry no later than the last minute, LTRIM only when the ring is full, EXPIREs once
-- a clock period): Redis time goes into calls, not into Lua.
for k = 1, #KEYS, 2 do
  local st, rk = KEYS[k], KEYS[k + 1]
  local n = tonumber(ARGV[a])
  local first_arg = a + 1
  a = a + 1 + n
  local names, dayof, minutes = {}, {}, {}
  for i = first_arg, a - 1 do
    local minute = tonumber(string.match(ARGV[i], '^(%d+)'))
    minutes[i] = minute
    local day = math.floor(minute / 1440)
    local f = 'd' .. (day % 8)  -- two days 8 apart share a field: the later one wins
    if dayof[f] == nil then names[#names + 1] = f end
    if dayof[f] == nil or day > dayof[f] then dayof[f] = day end
  end
  local cur = redis.call('HMGET', st, 'last', 'first', 'n', 'j', 'x', 'e', unpack(names))
  local last, first = tonumber(cur[1] or '0'), tonumber(cur[2] or '0')
  local fresh, pending = {}, {}  -- pending: a duplicate within the batch is the same action too
  local masks = {}
  for i = first_arg, a - 1 do
    local entry, minute = ARGV[i], minutes[i]
    if not pending[entry] and (minute > last or not redis.call('LPOS', rk, entry)) then
      pending[entry] = true
      fresh[#fresh + 1] = entry
      local hour = math.floor(minute / 60)
      local day = math.floor(hour / 24)
      masks[day] = bit.bor(masks[day] or 0, bit.lshift(1, hour % 24))
      if minute > last then last = minute end
      if first == 0 or minute < first then first = minute end
    end
  end
  if #fresh > 0 then
    local count = tonumber(cur[3] or '0') + #fresh
    if #fresh > ring then fresh = {unpack(fresh, #fresh - ring + 1)} end  -- what LTRIM would keep
    if redis.call('RPUSH', rk, unpack(fresh)) > ring then redis.call('LTRIM', rk, -ring, -1) end
    local fields = {'last', last, 'first', first, 'n', count}
    for i, f in ipairs(names) do
      local day = dayof[f]
      local mask = masks[day]
      local old = cur[6 + i]
      if mask and old then
        local d0, m0 = string.match(old, '(%d+):(%d+)')
        if tonumber(d0) == day then mask = bit.bor(mask, tonumber(m0)) end
        if tonumber(d0) > day then mask = nil end
      end
      if mask then
        fields[#fields + 1] = f
        fields[#fields + 1] = day .. ':' .. mask
      end
    end
    local judged = tonumber(cur[4] or '-1000000000')
    if count >= min_actions and last - judged >= every then
      fields[#fields + 1] = 'j'
      fields[#fields + 1] = last
      due[#due + 1] = (k + 1) / 2
    end
    if cur[6] ~= refresh then
      fields[#fields + 1] = 'e'
      fields[#fields + 1] = refresh
    end
    redis.call('HSET', st, unpack(fields))
    if cur[6] ~= refresh then
      redis.call('EXPIRE', st, ttl)
      redis.call('EXPIRE', rk, ttl)
    end
    if cur[5] == '1' then flagged[#flagged + 1] = (k + 1) / 2 end
  end
end
return {due, flagged}
