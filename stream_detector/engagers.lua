-- Who engaged each video of one batch, and when (stream_detector/worker/account_store.py).
-- KEYS: per video, its engagers ZSET (account -> minute of its latest action) and its
-- account HASH (t<hour>: account actions in that hour), both hash-tagged by the video.
-- ARGV: ttl_s, keep_minutes, max_engagers, then per video: n, then n x (account, minute, flagged),
-- flagged 1 when the account stands flagged: the action counts in f<hour> too.
-- Idempotent: an action counts only when its minute is later than the account's latest minute
-- on the video so far (what ZADD GT would change), so a replay adds nothing; the engagers older
-- than keep_minutes before the newest, and beyond max_engagers, are dropped.
-- Per video a constant number of calls (one ZMSCORE, one ZADD, one HINCRBY per hour touched), not
-- two per action: Redis time goes into calls.
local ttl, keep, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local CHUNK = 1000  -- arguments per call (unpack has a C stack limit)
local function each_chunk(list, step, fn)
  for i = 1, #list, CHUNK * step do fn(unpack(list, i, math.min(i + CHUNK * step - 1, #list))) end
end
local a = 4
for k = 1, #KEYS, 2 do
  local ze, va = KEYS[k], KEYS[k + 1]
  local n = tonumber(ARGV[a])
  local first = a + 1
  a = a + 1 + 3 * n
  local users, seen = {}, {}
  for i = first, a - 1, 3 do
    local user = ARGV[i]
    if not seen[user] then
      seen[user] = true
      users[#users + 1] = user
    end
  end
  local latest = {}
  local base = 0
  each_chunk(users, 1, function(...)
    local known = redis.call('ZMSCORE', ze, ...)
    for i = 1, #known do latest[users[base + i]] = tonumber(known[i]) end
    base = base + #known
  end)
  local counts, newest, changed = {}, 0, {}
  for i = first, a - 1, 3 do
    local user, minute, flagged = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
    local cur = latest[user]
    if cur == nil or minute > cur then
      changed[user] = true
      latest[user] = minute
      local hour = math.floor(minute / 60)
      counts['t' .. hour] = (counts['t' .. hour] or 0) + 1
      if flagged == '1' then counts['f' .. hour] = (counts['f' .. hour] or 0) + 1 end
    end
    if minute > newest then newest = minute end
  end
  local args = {}
  for user, _ in pairs(changed) do
    args[#args + 1] = latest[user]
    args[#args + 1] = user
  end
  each_chunk(args, 2, function(...) redis.call('ZADD', ze, 'GT', ...) end)
  for field, c in pairs(counts) do redis.call('HINCRBY', va, field, c) end
  redis.call('ZREMRANGEBYSCORE', ze, '-inf', '(' .. (newest - keep))
  redis.call('ZREMRANGEBYRANK', ze, 0, -most - 1)
  redis.call('EXPIRE', ze, ttl)
  redis.call('EXPIRE', va, ttl)
end
return 1
