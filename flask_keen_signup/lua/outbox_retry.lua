-- ARGV: row prefix, now, then (id, next_at, error) triples.
local last_error = nil
for i = 3, #ARGV, 3 do
  local m, key = member(ARGV[i]), row_key(ARGV[i])
  last_error = ARGV[i + 2]
  if is_open(redis.call('HGET', key, 'state')) then
    redis.call('HSET', key, 'next_at', ARGV[i + 1], 'last_error', ARGV[i + 2])
    redis.call('HSETNX', key, 'first_failed', ARGV[2])
    redis.call('ZADD', OPEN, ARGV[i + 1], m)
    unlease(key, m)
  end
end
if last_error then
  redis.call('HSET', META, 'last_error', last_error)
end
return 0
