-- ARGV: row prefix, next_at, error, ids...
for i = 4, #ARGV do
  local m, key = member(ARGV[i]), row_key(ARGV[i])
  if is_open(redis.call('HGET', key, 'state')) then
    redis.call('HSET', key, 'state', 'confirming', 'attempts', 0, 'next_at', ARGV[2],
               'last_error', ARGV[3])
    redis.call('ZADD', OPEN, ARGV[2], m)
    unlease(key, m)
  end
end
redis.call('HSET', META, 'last_error', ARGV[3])
return 0
