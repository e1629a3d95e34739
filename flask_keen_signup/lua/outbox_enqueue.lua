-- ARGV: row prefix, now, collection, user, token, body.  Returns the new row id.
local bad = check_types({SEQ, OPEN, IDLE, CREATED}, {'string', 'zset', 'zset', 'zset'})
if bad then return bad end
return enqueue(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
