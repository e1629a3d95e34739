-- Shared by the store's claim and the outbox's atomic claim-and-enqueue: the server's
-- clock, and the claim decision. It only *reads*; the caller writes, so a script that
-- loses the claim (or finds a key of the wrong type) has changed nothing.
local function server_now()
  local clock = redis.call('TIME')
  return tonumber(clock[1]) + tonumber(clock[2]) / 1000000
end
-- Returns true when the caller may (re)claim the marker: no marker yet, or a pending one
-- older than reclaim_after seconds (reclaim_after == '' disables reclaiming).
local function may_claim(marker, now, reclaim_after)
  local current = redis.call('GET', marker)
  if not current then
    return true
  end
  if reclaim_after == '' or string.sub(current, 1, 8) ~= 'pending:' then
    return false
  end
  local claimed_at = tonumber(string.sub(current, 9))
  return claimed_at ~= nil and claimed_at < now - tonumber(reclaim_after)
end
