-- Erasure. ARGV: row prefix, now, collection, user id, erased id, then row ids.
-- Returns {skipped, erased, dead letters deleted}.
local now, collection, user, erased = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local skipped, cleared, deleted = 0, 0, 0
for i = 6, #ARGV do
  local m, key = member(ARGV[i]), row_key(ARGV[i])
  local f = redis.call('HMGET', key, 'collection', 'user_id', 'state')
  if f[1] == collection and f[2] == user then
    if f[3] == 'dead' then
      redis.call('DEL', key)
      redis.call('ZREM', DEAD, m)
      deleted = deleted + 1
    elseif is_open(f[3]) then
      unindex(m)
      redis.call('HDEL', key, 'owner')
      redis.call('HSET', key, 'state', 'skipped', 'done_at', now, 'user_id', erased,
                 'body', '', 'last_error', 'skipped: erased on request')
      redis.call('ZADD', DONE, now, m)
      redis.call('HINCRBY', META, 'skipped', 1)
      skipped = skipped + 1
    else
      redis.call('HSET', key, 'user_id', erased, 'body', '')
      cleared = cleared + 1
    end
  end
end
redis.call('HDEL', META, 'last_error')
return {skipped, cleared, deleted}
