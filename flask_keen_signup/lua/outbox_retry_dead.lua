-- ARGV: row prefix, now, limit (0: the ids given), ids...
local now, limit = ARGV[2], tonumber(ARGV[3])
local members = {}
if limit > 0 then
  members = redis.call('ZRANGE', DEAD, 0, limit - 1)
else
  for i = 4, #ARGV do members[#members + 1] = member(ARGV[i]) end
end
local count = 0
for _, m in ipairs(members) do
  local key = row_key(m)
  if redis.call('ZREM', DEAD, m) == 1 then
    local f = redis.call('HMGET', key, 'state', 'reason', 'created_at')
    if f[1] == 'dead' then
      count = count + 1
      redis.call('HSET', key, 'state', 'pending', 'attempts', 0, 'next_at', now,
                 'last_error', f[2])
      redis.call('HDEL', key, 'reason', 'error_code', 'died_at', 'owner', 'last_at', 'done_at',
                 'first_failed')
      redis.call('ZADD', OPEN, now, m)
      redis.call('ZADD', IDLE, 0, m)
      redis.call('ZADD', CREATED, f[3], m)
    end
  end
end
return count
