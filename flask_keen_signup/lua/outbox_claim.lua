-- ARGV: row prefix, now, lease expiry, owner, limit, flush_since ('' = no flush).
local now, lease_until, owner = ARGV[2], ARGV[3], ARGV[4]
local limit, since = tonumber(ARGV[5]), ARGV[6]
local due = redis.call('ZRANGEBYSCORE', OPEN, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local picks, seen = {}, {}
for i = 1, #due, 2 do
  picks[#picks + 1] = {due[i], tonumber(due[i + 1])}
  seen[due[i]] = true
end
if since ~= '' then
  -- A flush also takes rows waiting out a backoff, if not claimed since it began.
  local waiting = redis.call('ZRANGEBYSCORE', IDLE, '-inf', '(' .. since, 'LIMIT', 0, limit)
  for _, m in ipairs(waiting) do
    if not seen[m] then
      local score = redis.call('ZSCORE', OPEN, m)
      if score then
        picks[#picks + 1] = {m, tonumber(score)}
        seen[m] = true
      end
    end
  end
  table.sort(picks, function(a, b)
    if a[2] ~= b[2] then return a[2] < b[2] end
    return a[1] < b[1]
  end)
end
local rows, resends = {}, 0
for i = 1, math.min(limit, #picks) do
  local m = picks[i][1]
  local key = row_key(m)
  local f = redis.call('HMGET', key, 'collection', 'user_id', 'token', 'body', 'attempts',
                       'created_at', 'last_error', 'state', 'owner', 'first_failed')
  if not f[1] or not is_open(f[8]) then
    -- An index entry without its open row (never written by these scripts): drop it.
    redis.call('ZREM', OPEN, m)
    redis.call('ZREM', LEASED, m)
    redis.call('ZREM', IDLE, m)
  else
    if f[9] and f[8] == 'pending' then
      resends = resends + 1  -- the previous claim ended with no outcome recorded
    end
    local attempts = tonumber(f[5]) + 1
    redis.call('HSET', key, 'attempts', attempts, 'owner', owner, 'next_at', lease_until,
               'last_at', now)
    redis.call('ZADD', OPEN, lease_until, m)
    redis.call('ZADD', LEASED, lease_until, m)
    redis.call('ZREM', IDLE, m)
    rows[#rows + 1] = {tonumber(m), f[1], f[2], f[3], f[4], attempts, f[6], f[7], f[8], f[10]}
  end
end
if resends > 0 then
  redis.call('HINCRBY', META, 'resends', resends)
end
return rows
