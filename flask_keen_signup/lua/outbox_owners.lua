-- ARGV: row prefix.  The distinct owners of live and expired leases.
local owners, seen = {}, {}
for _, m in ipairs(redis.call('ZRANGE', LEASED, 0, -1)) do
  local owner = redis.call('HGET', row_key(m), 'owner')
  if owner and not seen[owner] then
    seen[owner] = true
    owners[#owners + 1] = owner
  end
end
return owners
