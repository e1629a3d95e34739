-- ARGV: row prefix, owner, lease expiry, ids...
-- Extends the owner's live leases; rows done or leased by another owner are left alone.
local owner, lease_until = ARGV[2], ARGV[3]
local count = 0
for i = 4, #ARGV do
  local m = member(ARGV[i])
  local key = row_key(ARGV[i])
  local f = redis.call('HMGET', key, 'owner', 'state')
  if f[1] == owner and is_open(f[2]) then
    redis.call('HSET', key, 'next_at', lease_until)
    redis.call('ZADD', OPEN, lease_until, m)
    redis.call('ZADD', LEASED, lease_until, m)
    count = count + 1
  end
end
return count
