-- ARGV: row prefix, owners...  Make their rows due now.
local orphans = {}
for i = 2, #ARGV do orphans[ARGV[i]] = true end
local count = 0
for _, m in ipairs(redis.call('ZRANGE', LEASED, 0, -1)) do
  local key = row_key(m)
  local f = redis.call('HMGET', key, 'owner', 'next_at')
  if f[1] and orphans[f[1]] then
    count = count + 1
    if tonumber(f[2]) > 0 then
      redis.call('HSET', key, 'next_at', 0)
      redis.call('ZADD', OPEN, 0, m)
      redis.call('ZADD', LEASED, 0, m)
    end
  end
end
return count
