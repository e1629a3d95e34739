-- The prelude of every outbox script (see flask_keen_signup/delivery/redis_outbox.py).
--
-- Keys, with P = {prefix}:outbox:
--
--   P:seq       counter: row ids (INCR)
--   P:row:<id>  hash: collection, user_id, token, body (compact JSON), state, attempts,
--               created_at, next_at, owner (lease owner), last_at (last claim),
--               last_error, done_at, first_failed (the first retryable failure; rows
--               written before it existed simply gain it at their next failure); dead
--               rows add reason, error_code, died_at
--   P:open      zset of pending + confirming rows, score next_attempt_at
--               (a leased row's score is its lease expiry: claimable after it)
--   P:leased    zset of open rows with a lease owner, score lease expiry
--   P:idle      zset of open rows without a lease, score last claim time (0: never);
--               what a flush may claim ahead of its backoff (flush_since)
--   P:created   zset of open rows, score created_at (oldest_pending_age)
--   P:done      zset of delivered + skipped rows kept, score done_at (pruning)
--   P:dead      zset of dead letters, score died_at
--   P:meta      hash: delivered, skipped, resends counters; last_error;
--               bodies_dropped_until (the last retention pass's cutoff)
--
-- Zset members are row ids zero-padded to 16 digits so that equal scores order by id.
-- Times are the callers' wall-clock seconds, as the exact repr of a Python float.
--
-- KEYS: the eight index and counter keys, in the order below, in every script (so a
-- cluster runs it on their slot); claim-and-enqueue adds the user's marker as KEYS[9].
-- ARGV[1]: the row key prefix "P:row:". Row keys are computed from it: which rows a
-- script touches is known only inside it. The prefix carries the declared keys' hash tag
-- on a cluster, so the row keys are in their slot by construction.
local SEQ, OPEN, LEASED, IDLE = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local CREATED, DONE, DEAD, META = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local ROW = ARGV[1]
local function member(id)
  return string.format('%016d', tonumber(id))
end
local function row_key(id)
  return ROW .. tonumber(id)
end
local function is_open(state)
  return state == 'pending' or state == 'confirming'
end
-- The row leaves every open index (it is done, dead or erased).
local function unindex(m)
  redis.call('ZREM', OPEN, m)
  redis.call('ZREM', LEASED, m)
  redis.call('ZREM', IDLE, m)
  redis.call('ZREM', CREATED, m)
end
-- The row is open and leaves its lease: back into the idle index at its last claim time.
local function unlease(key, m)
  redis.call('HDEL', key, 'owner')
  redis.call('ZREM', LEASED, m)
  redis.call('ZADD', IDLE, redis.call('HGET', key, 'last_at') or 0, m)
end
