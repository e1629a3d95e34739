-- ARGV: row prefix, now, then (id, reason, has_code '1'|'0', code) quadruples.
local now, last_reason = ARGV[2], nil
for i = 3, #ARGV, 4 do
  local m, key = member(ARGV[i]), row_key(ARGV[i])
  last_reason = ARGV[i + 1]
  if is_open(redis.call('HGET', key, 'state')) then
    redis.call('HSET', key, 'state', 'dead', 'reason', ARGV[i + 1], 'died_at', now)
    if ARGV[i + 2] == '1' then
      redis.call('HSET', key, 'error_code', ARGV[i + 3])
    else
      redis.call('HDEL', key, 'error_code')
    end
    redis.call('HDEL', key, 'owner')
    unindex(m)
    redis.call('ZADD', DEAD, now, m)
  end
end
if last_reason then
  redis.call('HSET', META, 'last_error', last_reason)
end
return 0
