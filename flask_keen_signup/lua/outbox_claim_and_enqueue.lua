-- KEYS[9]: the user's marker.
-- ARGV: row prefix, now, collection, user, token, body, reclaim_after ('' = never).
-- Returns the new row id, or 0 when the user was already claimed (nothing written).
local marker = KEYS[9]
local bad = check_types({marker, SEQ, OPEN, IDLE, CREATED},
                        {'string', 'string', 'zset', 'zset', 'zset'})
if bad then return bad end
local server_time = server_now()
if not may_claim(marker, server_time, ARGV[7]) then
  return 0
end
redis.call('SET', marker, string.format('pending:%.6f', server_time))
return enqueue(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
