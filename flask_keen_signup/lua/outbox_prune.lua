-- ARGV: row prefix, cutoff, limit.
local gone = redis.call('ZRANGEBYSCORE', DONE, '-inf', '(' .. ARGV[2], 'LIMIT', 0,
                        tonumber(ARGV[3]))
for _, m in ipairs(gone) do
  redis.call('DEL', row_key(m))
  redis.call('ZREM', DONE, m)
end
return #gone
