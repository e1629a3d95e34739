-- ARGV: row prefix, state (delivered|skipped), now, keep ('1'|'0'), then (id, reason) pairs.
local state, now, keep = ARGV[2], ARGV[3], ARGV[4] == '1'
local count = 0
for i = 5, #ARGV, 2 do
  local m, key = member(ARGV[i]), row_key(ARGV[i])
  if is_open(redis.call('HGET', key, 'state')) then
    count = count + 1
    unindex(m)
    if keep then
      redis.call('HSET', key, 'state', state, 'done_at', now)
      redis.call('HDEL', key, 'owner')
      if state == 'skipped' then
        redis.call('HSET', key, 'last_error', 'skipped: ' .. ARGV[i + 1])
      end
      redis.call('ZADD', DONE, now, m)
    else
      redis.call('DEL', key)
    end
  end
end
if count > 0 then
  redis.call('HINCRBY', META, state, count)
end
return count
