-- KEYS: the marker. Delete only a *pending* marker: a confirmed one must survive a late
-- release.
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 8) == 'pending:' then
  return redis.call('DEL', KEYS[1])
end
return 0
