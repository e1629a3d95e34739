-- After claim_decision.lua. KEYS: the marker.  ARGV: reclaim_after ('' = never).
-- Returns 1 when this call claimed the user, else 0.
local now = server_now()
if not may_claim(KEYS[1], now, ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], string.format('pending:%.6f', now))
return 1
