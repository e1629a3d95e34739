-- After outbox.lua: the writes of enqueue and claim-and-enqueue.
local function enqueue(now, collection, user, token, body)
  local id = redis.call('INCR', SEQ)
  local m = member(id)
  redis.call('HSET', row_key(id), 'collection', collection, 'user_id', user,
             'token', token, 'body', body, 'state', 'pending', 'attempts', 0,
             'created_at', now, 'next_at', now)
  redis.call('ZADD', OPEN, now, m)
  redis.call('ZADD', IDLE, 0, m)
  redis.call('ZADD', CREATED, now, m)
  return id
end
-- Refuse (before any write) keys that a later write would fail on.
local function check_types(keys, kinds)
  for i, key in ipairs(keys) do
    local kind = redis.call('TYPE', key).ok
    if kind ~= 'none' and kind ~= kinds[i] then
      return redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. kind .. ', not a ' .. kinds[i])
    end
  end
  return nil
end
