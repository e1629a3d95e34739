-- Retention. ARGV: row prefix, cutoff, limit, offset, skew margin.
-- Rows finished before the last pass's cutoff (less a margin for hosts' clock skew) were
-- handled by that pass, so each pass reads only what finished since: cheap when idle.
-- Returns {bodies dropped, rows read}.
local cutoff, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local low = '-inf'
local last = redis.call('HGET', META, 'bodies_dropped_until')
if last then low = tostring(tonumber(last) - tonumber(ARGV[5])) end
local members = redis.call('ZRANGEBYSCORE', DONE, low, '(' .. ARGV[2], 'LIMIT',
                           tonumber(ARGV[4]), limit)
local dropped = 0
for _, m in ipairs(members) do
  local key = row_key(m)
  local body = redis.call('HGET', key, 'body')
  if body and body ~= '' then
    redis.call('HSET', key, 'body', '')
    dropped = dropped + 1
  end
end
if #members < limit and (not last or tonumber(last) < cutoff) then
  redis.call('HSET', META, 'bodies_dropped_until', ARGV[2])
end
return {dropped, #members}
