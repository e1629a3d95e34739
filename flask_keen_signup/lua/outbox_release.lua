-- ARGV: row prefix, now, ids...  Leased rows given back unsent: due now, attempt undone.
for i = 3, #ARGV do
  local m, key = member(ARGV[i]), row_key(ARGV[i])
  local f = redis.call('HMGET', key, 'state', 'owner', 'attempts')
  if is_open(f[1]) and f[2] then
    redis.call('HSET', key, 'next_at', ARGV[2], 'attempts', math.max(0, tonumber(f[3]) - 1))
    redis.call('ZADD', OPEN, ARGV[2], m)
    unlease(key, m)
  end
end
return 0
