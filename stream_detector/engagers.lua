-- Who engaged each video of one batch, and when (stream_detector/worker/account_store.py).
-- KEYS: per video, its engagers ZSET (account -> minute of its latest action) and its
-- account HASH (t<hour>: account actions in that hour), both hash-tagged by the video.
-- ARGV: ttl_s, keep_minutes, max_engagers, then per video: n, then n x (account, minute, flagged),
-- flagged 1 when the account stands flagged: the action counts in f<hour> too.
-- Idempotent: an (account, minute) already recorded (ZADD GT changes nothing) is not counted
-- again, so a replay adds nothing; the engagers older than keep_minutes before the newest,
-- and beyond max_engagers, are dropped.
local ttl, keep, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local a = 4
for k = 1, #KEYS, 2 do
  local ze, va = KEYS[k], KEYS[k + 1]
  local n = tonumber(ARGV[a])
  a = a + 1
  local newest = 0
  for _ = 1, n do
    local user, minute, flagged = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]
    a = a + 3
    if redis.call('ZADD', ze, 'GT', 'CH', minute, user) == 1 then
      local hour = math.floor(minute / 60)
      redis.call('HINCRBY', va, 't' .. hour, 1)
      if flagged == '1' then redis.call('HINCRBY', va, 'f' .. hour, 1) end
    end
    if minute > newest then newest = minute end
  end
  redis.call('ZREMRANGEBYSCORE', ze, '-inf', '(' .. (newest - keep))
  redis.call('ZREMRANGEBYRANK', ze, 0, -most - 1)
  redis.call('EXPIRE', ze, ttl)
  redis.call('EXPIRE', va, ttl)
end
return 1
