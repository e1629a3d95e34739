"""The ``redis`` outbox: one durable queue shared by every host of the app.

With several hosts, each host's SQLite outbox would be lost with its container. Here the
queue lives in Redis: any host's sender may deliver any event, an event leased by a
container that disappears becomes claimable again when its lease runs out, and two hosts
never hold a lease on the same event at once.

Design: hashes and sorted sets, every change one Lua script
------------------------------------------------------------

The design first sketched Redis Streams with a consumer group. They fit "hand each message to one
consumer and re-deliver it when the consumer dies", but not the rest of the contract:

- each row has its own backoff (``next_attempt_at``). A stream entry is immutable and a
  consumer group re-delivers by *idle time*, one threshold per ``XAUTOCLAIM`` call, so a
  per-row schedule would need a sorted set beside the stream anyway;
- attempts, last error, state (pending/confirming/delivered/skipped/dead), ``flush_since``
  and ``release`` (which *undoes* an attempt) all mutate a row, so a hash per row is needed
  anyway;
- with those two in place, the stream and its pending-entries list would be a second
  source of truth to keep in step with them.

So the outbox is a row hash per event plus sorted sets used as indexes, and every
operation is a single Lua script (Redis runs a script atomically: no other client sees a
half-done change, and two claimers are serialised). Scripts decide first and write last,
so a script that fails on a bad key writes nothing. Keys, with ``P = {prefix}:outbox``::

    P:seq            counter: row ids (INCR)
    P:row:<id>       hash: collection, user_id, token, body (compact JSON), state,
                     attempts, created_at, next_at, owner (lease owner), last_at
                     (last claim), last_error, done_at, first_failed (the first
                     retryable failure; rows written before it existed simply gain it at
                     their next failure); dead rows add reason, error_code, died_at
    P:open           zset of pending + confirming rows, score next_attempt_at
                     (a leased row's score is its lease expiry: claimable after it)
    P:leased         zset of open rows with a lease owner, score lease expiry
    P:idle           zset of open rows without a lease, score last claim time (0: never);
                     what a flush may claim ahead of its backoff (``flush_since``)
    P:created        zset of open rows, score created_at (``oldest_pending_age``)
    P:done           zset of delivered + skipped rows kept, score done_at (pruning)
    P:dead           zset of dead letters, score died_at
    P:meta           hash: delivered, skipped, resends counters; last_error

Zset members are row ids zero-padded to 16 digits so that equal scores order by id.
Times are the callers' wall-clock seconds (the :class:`~.Outbox` contract), stored as the
exact ``repr`` of the float the caller passed.

Claiming is ``ZRANGEBYSCORE P:open -inf now LIMIT n``, then for each row: attempts + 1,
owner set, score moved to ``now + lease``. A leased row is therefore invisible to other
claimers until its lease expires, and a row whose owner vanished is claimed again after it
(counted in ``resends``, since the first claim recorded no outcome).

Durability is Redis's: see ``docs/redis.md`` for AOF settings.

Redis Cluster. Each script declares in ``KEYS`` every index and counter it touches (and
the claim-and-enqueue script the user's marker). The row hashes are the one exception:
which rows a script touches is known only inside it (``ZRANGEBYSCORE``), so it computes
``P:row:<id>`` from the row prefix it gets as ``ARGV[1]``. That is safe in a cluster by
construction: the prefix must carry a ``{…}`` hash tag (the constructor refuses a cluster
client otherwise), so every row key hashes to the slot of the declared keys, and Redis
runs the script on the node that owns it.
"""

from __future__ import annotations

import time
import typing as t

from ..stores.redis import CLAIM_DECISION_LUA
from ..stores.redis import DEFAULT_PREFIX
from ..stores.redis import RedisStore
from ..stores.redis import check_prefix
from ..stores.redis import is_cluster
from ..stores.redis import store_errors
from ..stores.redis import text
from . import DELIVERED
from . import SKIPPED
from . import DeadLetter
from . import ErasedRows
from . import Outbox
from . import OutboxRow
from . import OutboxStats
from . import QueuedEvent

if t.TYPE_CHECKING:  # at run time the import of ..stores.redis checked the dependency
    from ..stores.redis import Client

#: Rows handled per script call by the bulk maintenance operations (prune, retry all):
#: a script blocks the whole server while it runs, so long jobs go in slices.
CHUNK = 1000

# Helpers shared by the scripts. ARGV[1] is always the row key prefix ("P:row:"): row keys
# are computed from it, in the declared keys' slot by construction (module docstring).
_PRELUDE = """
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
-- The row is open and leaves its lease: back into the idle index at its last claim time.
local function unlease(key, m, leased, idle)
  redis.call('HDEL', key, 'owner')
  redis.call('ZREM', leased, m)
  redis.call('ZADD', idle, redis.call('HGET', key, 'last_at') or 0, m)
end
"""

# KEYS: seq, open, idle, created.  ARGV: row prefix, now, collection, user, token, body.
_ENQUEUE_BODY = """
local function enqueue(seq, open, idle, created, now, collection, user, token, body)
  local id = redis.call('INCR', seq)
  local m = member(id)
  redis.call('HSET', row_key(id), 'collection', collection, 'user_id', user,
             'token', token, 'body', body, 'state', 'pending', 'attempts', 0,
             'created_at', now, 'next_at', now)
  redis.call('ZADD', open, now, m)
  redis.call('ZADD', idle, 0, m)
  redis.call('ZADD', created, now, m)
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
"""

_ENQUEUE_LUA = (
    _PRELUDE
    + _ENQUEUE_BODY
    + """
local bad = check_types(KEYS, {'string', 'zset', 'zset', 'zset'})
if bad then return bad end
return enqueue(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
"""
)

# KEYS: marker, seq, open, idle, created.
# ARGV: row prefix, now, collection, user, token, body, reclaim_after ('' = never).
# Returns the new row id, or 0 when the user was already claimed (nothing written).
_CLAIM_AND_ENQUEUE_LUA = (
    _PRELUDE
    + _ENQUEUE_BODY
    + CLAIM_DECISION_LUA
    + """
local bad = check_types(KEYS, {'string', 'string', 'zset', 'zset', 'zset'})
if bad then return bad end
local server_time = server_now()
if not may_claim(KEYS[1], server_time, ARGV[7]) then
  return 0
end
redis.call('SET', KEYS[1], string.format('pending:%.6f', server_time))
return enqueue(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
"""
)

# KEYS: open, leased, idle, meta.
# ARGV: row prefix, now, lease expiry, owner, limit, flush_since ('' = no flush).
_CLAIM_LUA = (
    _PRELUDE
    + """
local open, leased, idle, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, lease_until, owner = ARGV[2], ARGV[3], ARGV[4]
local limit, since = tonumber(ARGV[5]), ARGV[6]
local due = redis.call('ZRANGEBYSCORE', open, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local picks, seen = {}, {}
for i = 1, #due, 2 do
  picks[#picks + 1] = {due[i], tonumber(due[i + 1])}
  seen[due[i]] = true
end
if since ~= '' then
  -- A flush also takes rows waiting out a backoff, if not claimed since it began.
  local waiting = redis.call('ZRANGEBYSCORE', idle, '-inf', '(' .. since, 'LIMIT', 0, limit)
  for _, m in ipairs(waiting) do
    if not seen[m] then
      local score = redis.call('ZSCORE', open, m)
      if score then
        picks[#picks + 1] = {m, tonumber(score)}
        seen[m] = true
      end
    end
  end
  table.sort(picks, function(a, b)
    if a[2] ~= b[2] then return a[2] < b[2] end
    return a[1] < b[1]
  end)
end
local rows, resends = {}, 0
for i = 1, math.min(limit, #picks) do
  local m = picks[i][1]
  local key = row_key(m)
  local f = redis.call('HMGET', key, 'collection', 'user_id', 'token', 'body', 'attempts',
                       'created_at', 'last_error', 'state', 'owner', 'first_failed')
  if not f[1] or not is_open(f[8]) then
    -- An index entry without its open row (never written by these scripts): drop it.
    redis.call('ZREM', open, m)
    redis.call('ZREM', leased, m)
    redis.call('ZREM', idle, m)
  else
    if f[9] and f[8] == 'pending' then
      resends = resends + 1  -- the previous claim ended with no outcome recorded
    end
    local attempts = tonumber(f[5]) + 1
    redis.call('HSET', key, 'attempts', attempts, 'owner', owner, 'next_at', lease_until,
               'last_at', now)
    redis.call('ZADD', open, lease_until, m)
    redis.call('ZADD', leased, lease_until, m)
    redis.call('ZREM', idle, m)
    rows[#rows + 1] = {tonumber(m), f[1], f[2], f[3], f[4], attempts, f[6], f[7], f[8], f[10]}
  end
end
if resends > 0 then
  redis.call('HINCRBY', meta, 'resends', resends)
end
return rows
"""
)

# KEYS: open, leased, idle, created, done, meta.
# ARGV: row prefix, state (delivered|skipped), now, keep ('1'|'0'), then (id, reason) pairs.
_FINISH_LUA = (
    _PRELUDE
    + """
local open, leased, idle, created, done, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local state, now, keep = ARGV[2], ARGV[3], ARGV[4] == '1'
local count = 0
for i = 5, #ARGV, 2 do
  local m, key = member(ARGV[i]), row_key(ARGV[i])
  if is_open(redis.call('HGET', key, 'state')) then
    count = count + 1
    redis.call('ZREM', open, m)
    redis.call('ZREM', leased, m)
    redis.call('ZREM', idle, m)
    redis.call('ZREM', created, m)
    if keep then
      redis.call('HSET', key, 'state', state, 'done_at', now)
      redis.call('HDEL', key, 'owner')
      if state == 'skipped' then
        redis.call('HSET', key, 'last_error', 'skipped: ' .. ARGV[i + 1])
      end
      redis.call('ZADD', done, now, m)
    else
      redis.call('DEL', key)
    end
  end
end
if count > 0 then
  redis.call('HINCRBY', meta, state, count)
end
return count
"""
)

# KEYS: open, leased, idle, meta.  ARGV: row prefix, next_at, error, ids...
_CONFIRMING_LUA = (
    _PRELUDE
    + """
local open, leased, idle, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
for i = 4, #ARGV do
  local m, key = member(ARGV[i]), row_key(ARGV[i])
  if is_open(redis.call('HGET', key, 'state')) then
    redis.call('HSET', key, 'state', 'confirming', 'attempts', 0, 'next_at', ARGV[2],
               'last_error', ARGV[3])
    redis.call('ZADD', open, ARGV[2], m)
    unlease(key, m, leased, idle)
  end
end
redis.call('HSET', meta, 'last_error', ARGV[3])
return 0
"""
)

# KEYS: open, leased, idle, meta.
# ARGV: row prefix, now, then (id, next_at, error) triples.
_RETRY_LUA = (
    _PRELUDE
    + """
local open, leased, idle, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local last_error = nil
for i = 3, #ARGV, 3 do
  local m, key = member(ARGV[i]), row_key(ARGV[i])
  last_error = ARGV[i + 2]
  if is_open(redis.call('HGET', key, 'state')) then
    redis.call('HSET', key, 'next_at', ARGV[i + 1], 'last_error', ARGV[i + 2])
    redis.call('HSETNX', key, 'first_failed', ARGV[2])
    redis.call('ZADD', open, ARGV[i + 1], m)
    unlease(key, m, leased, idle)
  end
end
if last_error then
  redis.call('HSET', meta, 'last_error', last_error)
end
return 0
"""
)

# KEYS: open, leased, idle, created, dead, meta.
# ARGV: row prefix, now, then (id, reason, has_code '1'|'0', code) quadruples.
_DEAD_LUA = (
    _PRELUDE
    + """
local open, leased, idle, created, dead, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now, last_reason = ARGV[2], nil
for i = 3, #ARGV, 4 do
  local m, key = member(ARGV[i]), row_key(ARGV[i])
  last_reason = ARGV[i + 1]
  if is_open(redis.call('HGET', key, 'state')) then
    redis.call('HSET', key, 'state', 'dead', 'reason', ARGV[i + 1], 'died_at', now)
    if ARGV[i + 2] == '1' then
      redis.call('HSET', key, 'error_code', ARGV[i + 3])
    else
      redis.call('HDEL', key, 'error_code')
    end
    redis.call('HDEL', key, 'owner')
    redis.call('ZREM', open, m)
    redis.call('ZREM', leased, m)
    redis.call('ZREM', idle, m)
    redis.call('ZREM', created, m)
    redis.call('ZADD', dead, now, m)
  end
end
if last_reason then
  redis.call('HSET', meta, 'last_error', last_reason)
end
return 0
"""
)

# KEYS: open, leased, idle.  ARGV: row prefix, now, ids...
_RELEASE_LUA = (
    _PRELUDE
    + """
local open, leased, idle = KEYS[1], KEYS[2], KEYS[3]
for i = 3, #ARGV do
  local m, key = member(ARGV[i]), row_key(ARGV[i])
  local f = redis.call('HMGET', key, 'state', 'owner', 'attempts')
  if is_open(f[1]) and f[2] then
    redis.call('HSET', key, 'next_at', ARGV[2], 'attempts', math.max(0, tonumber(f[3]) - 1))
    redis.call('ZADD', open, ARGV[2], m)
    unlease(key, m, leased, idle)
  end
end
return 0
"""
)

# KEYS: open, leased.  ARGV: row prefix, owner, lease expiry, ids...
# Extends the owner's live leases; rows done or leased by another owner are left alone.
_RENEW_LUA = (
    _PRELUDE
    + """
local open, leased = KEYS[1], KEYS[2]
local owner, lease_until = ARGV[2], ARGV[3]
local count = 0
for i = 4, #ARGV do
  local m = member(ARGV[i])
  local key = row_key(ARGV[i])
  local f = redis.call('HMGET', key, 'owner', 'state')
  if f[1] == owner and is_open(f[2]) then
    redis.call('HSET', key, 'next_at', lease_until)
    redis.call('ZADD', open, lease_until, m)
    redis.call('ZADD', leased, lease_until, m)
    count = count + 1
  end
end
return count
"""
)

# KEYS: leased.  ARGV: row prefix.  The distinct owners of live and expired leases.
_OWNERS_LUA = (
    _PRELUDE
    + """
local owners, seen = {}, {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local owner = redis.call('HGET', row_key(m), 'owner')
  if owner and not seen[owner] then
    seen[owner] = true
    owners[#owners + 1] = owner
  end
end
return owners
"""
)

# KEYS: open, leased.  ARGV: row prefix, owners...  Make their rows due now.
_EXPIRE_LUA = (
    _PRELUDE
    + """
local open, leased = KEYS[1], KEYS[2]
local orphans = {}
for i = 2, #ARGV do orphans[ARGV[i]] = true end
local count = 0
for _, m in ipairs(redis.call('ZRANGE', leased, 0, -1)) do
  local key = row_key(m)
  local f = redis.call('HMGET', key, 'owner', 'next_at')
  if f[1] and orphans[f[1]] then
    count = count + 1
    if tonumber(f[2]) > 0 then
      redis.call('HSET', key, 'next_at', 0)
      redis.call('ZADD', open, 0, m)
      redis.call('ZADD', leased, 0, m)
    end
  end
end
return count
"""
)

# KEYS: open, idle, created, dead.
# ARGV: row prefix, now, limit (0: the ids given), ids...
_RETRY_DEAD_LUA = (
    _PRELUDE
    + """
local open, idle, created, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, limit = ARGV[2], tonumber(ARGV[3])
local members = {}
if limit > 0 then
  members = redis.call('ZRANGE', dead, 0, limit - 1)
else
  for i = 4, #ARGV do members[#members + 1] = member(ARGV[i]) end
end
local count = 0
for _, m in ipairs(members) do
  local key = row_key(m)
  if redis.call('ZREM', dead, m) == 1 then
    local f = redis.call('HMGET', key, 'state', 'reason', 'created_at')
    if f[1] == 'dead' then
      count = count + 1
      redis.call('HSET', key, 'state', 'pending', 'attempts', 0, 'next_at', now,
                 'last_error', f[2])
      redis.call('HDEL', key, 'reason', 'error_code', 'died_at', 'owner', 'last_at', 'done_at',
                 'first_failed')
      redis.call('ZADD', open, now, m)
      redis.call('ZADD', idle, 0, m)
      redis.call('ZADD', created, f[3], m)
    end
  end
end
return count
"""
)

# KEYS: done.  ARGV: row prefix, cutoff, limit.
_PRUNE_LUA = (
    _PRELUDE
    + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0,
                        tonumber(ARGV[3]))
for _, m in ipairs(gone) do
  redis.call('DEL', row_key(m))
  redis.call('ZREM', KEYS[1], m)
end
return #gone
"""
)

# Retention. KEYS: done, meta.  ARGV: row prefix, cutoff, limit, offset, skew margin.
# Rows finished before the last pass's cutoff (less a margin for hosts' clock skew) were
# handled by that pass, so each pass reads only what finished since: cheap when idle.
# Returns {bodies dropped, rows read}.
_DROP_BODIES_LUA = (
    _PRELUDE
    + """
local done, meta = KEYS[1], KEYS[2]
local cutoff, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local low = '-inf'
local last = redis.call('HGET', meta, 'bodies_dropped_until')
if last then low = tostring(tonumber(last) - tonumber(ARGV[5])) end
local members = redis.call('ZRANGEBYSCORE', done, low, '(' .. ARGV[2], 'LIMIT',
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
  redis.call('HSET', meta, 'bodies_dropped_until', ARGV[2])
end
return {dropped, #members}
"""
)

# Erasure. KEYS: open, leased, idle, created, done, dead, meta.
# ARGV: row prefix, now, collection, user id, erased id, then row ids.
# Returns {skipped, erased, dead letters deleted}.
_FORGET_LUA = (
    _PRELUDE
    + """
local open, leased, idle, created = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local done, dead, meta = KEYS[5], KEYS[6], KEYS[7]
local now, collection, user, erased = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local skipped, cleared, deleted = 0, 0, 0
for i = 6, #ARGV do
  local m, key = member(ARGV[i]), row_key(ARGV[i])
  local f = redis.call('HMGET', key, 'collection', 'user_id', 'state')
  if f[1] == collection and f[2] == user then
    if f[3] == 'dead' then
      redis.call('DEL', key)
      redis.call('ZREM', dead, m)
      deleted = deleted + 1
    elseif is_open(f[3]) then
      redis.call('ZREM', open, m)
      redis.call('ZREM', leased, m)
      redis.call('ZREM', idle, m)
      redis.call('ZREM', created, m)
      redis.call('HDEL', key, 'owner')
      redis.call('HSET', key, 'state', 'skipped', 'done_at', now, 'user_id', erased,
                 'body', '', 'last_error', 'skipped: erased on request')
      redis.call('ZADD', done, now, m)
      redis.call('HINCRBY', meta, 'skipped', 1)
      skipped = skipped + 1
    else
      redis.call('HSET', key, 'user_id', erased, 'body', '')
      cleared = cleared + 1
    end
  end
end
redis.call('HDEL', meta, 'last_error')
return {skipped, cleared, deleted}
"""
)

# Status: one consistent snapshot (a script, not MULTI: redis-py's cluster pipelines differ
# from version to version). KEYS: open, leased, meta, dead, created.  ARGV: now.
_STATS_LUA = """
local open, leased, meta, dead, created = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local oldest = redis.call('ZRANGE', created, 0, 0, 'WITHSCORES')
return {redis.call('ZCARD', open), redis.call('ZCOUNT', open, '-inf', ARGV[1]),
        redis.call('ZCOUNT', leased, '(' .. ARGV[1], '+inf'),
        redis.call('HMGET', meta, 'delivered', 'skipped', 'resends', 'last_error'),
        redis.call('ZCARD', dead), oldest[2] or false}
"""

#: Clock skew between hosts tolerated by the retention pass, in seconds.
RETENTION_SKEW = 3600.0


def _num(value: float) -> str:
    """A float as the exact text Redis and Lua parse back to the same double."""
    return repr(float(value))


def _opt_text(value: t.Any) -> str | None:
    return None if value is None else text(value)


class RedisOutbox(Outbox):
    """The outbox in Redis, shared by every host's sender (see the module docstring).

    :param client: a :class:`redis.Redis` or :class:`redis.cluster.RedisCluster` (see
        :func:`flask_keen_signup.stores.redis.connect`); decoded responses or not. Use the
        same server as the :class:`RedisStore` so that :meth:`claim_and_enqueue` can claim
        and enqueue in one step.
    :param prefix: first part of every key (the store's default is the same); with a
        cluster client it needs a ``{…}`` hash tag, else :class:`ValueError`.
    :param keep_delivered: keep delivered and skipped rows (with their body) until
        :meth:`prune_delivered`; ``False`` deletes each as soon as it is done (the
        counters are kept either way).
    :param close_client: :meth:`close` closes ``client`` (when the extension created it).
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = DEFAULT_PREFIX,
        keep_delivered: bool = True,
        close_client: bool = False,
    ) -> None:
        check_prefix(client, prefix)
        self.client = client
        self.prefix = prefix
        self.keep_delivered = keep_delivered
        self.close_client = close_client
        base = f"{prefix}:outbox"
        self._row = f"{base}:row:"
        self._seq = f"{base}:seq"
        self._open = f"{base}:open"
        self._leased = f"{base}:leased"
        self._idle = f"{base}:idle"
        self._created = f"{base}:created"
        self._done = f"{base}:done"
        self._dead = f"{base}:dead"
        self._meta = f"{base}:meta"
        register = client.register_script
        self._enqueue = register(_ENQUEUE_LUA)
        self._claim_and_enqueue = register(_CLAIM_AND_ENQUEUE_LUA)
        self._claim = register(_CLAIM_LUA)
        self._finish = register(_FINISH_LUA)
        self._confirming = register(_CONFIRMING_LUA)
        self._retry = register(_RETRY_LUA)
        self._kill = register(_DEAD_LUA)
        self._release = register(_RELEASE_LUA)
        self._renew = register(_RENEW_LUA)
        self._owners = register(_OWNERS_LUA)
        self._expire = register(_EXPIRE_LUA)
        self._retry_dead = register(_RETRY_DEAD_LUA)
        self._prune = register(_PRUNE_LUA)
        self._drop_bodies = register(_DROP_BODIES_LUA)
        self._forget = register(_FORGET_LUA)
        self._stats = register(_STATS_LUA)

    def __repr__(self) -> str:
        return f"<RedisOutbox prefix={self.prefix!r}>"

    def row_key(self, row_id: int) -> str:
        """The key of one row's hash (for support work and tests)."""
        return f"{self._row}{row_id}"

    # -- request path -----------------------------------------------------------------

    def enqueue(self, event: QueuedEvent, *, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with store_errors("enqueue in the outbox"):
            row_id = self._enqueue(
                keys=[self._seq, self._open, self._idle, self._created],
                args=[self._row, _num(now), *self._event_args(event)],
            )
        return int(row_id)

    def claim_and_enqueue(
        self, store: RedisStore, user_id: str, event: QueuedEvent, *, now: float | None = None
    ) -> bool:
        """Claim ``user_id``'s marker in ``store`` and enqueue ``event``: one atomic step.

        One Lua script: either the marker is created *and* the event queued, or (the user
        was already claimed, or a key is unusable) nothing is written. So a signup can be
        neither lost between the two writes nor queued twice by two hosts. ``store`` must
        use the same Redis server and database as this outbox; its ``reclaim_after`` is
        honoured like :meth:`RedisStore.claim`.

        :returns: ``True`` if this call claimed the user (and queued the event).
        :raises StoreError: Redis failed; then nothing was written.
        """
        now = time.time() if now is None else now
        with store_errors("claim and enqueue"):
            row_id = self._claim_and_enqueue(
                keys=[store.key(user_id), self._seq, self._open, self._idle, self._created],
                args=[self._row, _num(now), *self._event_args(event), store.reclaim_arg],
            )
        return int(row_id) > 0

    def claim_and_enqueue_many(
        self, store: RedisStore, events: t.Sequence[QueuedEvent], *, now: float | None = None
    ) -> list[bool]:
        """:meth:`claim_and_enqueue` for many users in one round trip (a pipeline).

        Each user's claim-and-enqueue is still its own atomic script; the pipeline only
        saves the round trips (the sender deciding a spool of thousands of signups). On a
        Redis Cluster it is one script call after another.
        """
        now = time.time() if now is None else now
        if is_cluster(self.client):  # redis-py 5 refuses scripts in a cluster pipeline
            return [self.claim_and_enqueue(store, e.user_id, e, now=now) for e in events]
        with store_errors("claim and enqueue"):
            pipe = self.client.pipeline(transaction=False)
            indexes = [self._seq, self._open, self._idle, self._created]
            for event in events:
                self._claim_and_enqueue(
                    keys=[store.key(event.user_id), *indexes],
                    args=[self._row, _num(now), *self._event_args(event), store.reclaim_arg],
                    client=pipe,
                )
            results = pipe.execute()
        return [int(row_id) > 0 for row_id in results]

    @staticmethod
    def _event_args(event: QueuedEvent) -> list[str]:
        return [event.collection, event.user_id, event.uniqueness_token, event.body_json]

    # -- sender -----------------------------------------------------------------------

    def claim_due(
        self,
        limit: int,
        *,
        now: float,
        lease_seconds: float,
        owner: str,
        flush_since: float | None = None,
    ) -> list[OutboxRow]:
        if limit < 1:
            return []
        lease_until = now + lease_seconds
        with store_errors("claim from the outbox"):
            records = self._claim(
                keys=[self._open, self._leased, self._idle, self._meta],
                args=[
                    self._row,
                    _num(now),
                    _num(lease_until),
                    owner,
                    limit,
                    "" if flush_since is None else _num(flush_since),
                ],
            )
        rows = [
            OutboxRow(
                id=int(r[0]),
                collection=text(r[1]),
                user_id=text(r[2]),
                uniqueness_token=text(r[3]),
                body_json=text(r[4]),
                attempts=int(r[5]),
                created_at=float(r[6]),
                next_attempt_at=lease_until,
                last_error=_opt_text(r[7]),
                state=text(r[8]),
                first_failed_at=None if len(r) < 10 or r[9] is None else float(r[9]),
            )
            for r in records
        ]
        rows.sort(key=lambda row: row.id)
        return rows

    def _mark_done(self, state: str, pairs: list[str], now: float | None) -> None:
        now = time.time() if now is None else now
        with store_errors(f"mark rows {state}"):
            self._finish(
                keys=[
                    self._open,
                    self._leased,
                    self._idle,
                    self._created,
                    self._done,
                    self._meta,
                ],
                args=[self._row, state, _num(now), "1" if self.keep_delivered else "0", *pairs],
            )

    def mark_delivered(self, ids: t.Collection[int], *, now: float | None = None) -> None:
        if ids:
            self._mark_done(DELIVERED, [part for i in ids for part in (str(int(i)), "")], now)

    def mark_skipped(self, reasons: t.Mapping[int, str], *, now: float | None = None) -> None:
        if reasons:
            pairs = [part for i, reason in reasons.items() for part in (str(int(i)), reason)]
            self._mark_done(SKIPPED, pairs, now)

    def mark_confirming(
        self, ids: t.Collection[int], *, next_attempt_at: float, error: str
    ) -> None:
        if not ids:
            return
        with store_errors("mark rows confirming"):
            self._confirming(
                keys=[self._open, self._leased, self._idle, self._meta],
                args=[self._row, _num(next_attempt_at), error, *(str(int(i)) for i in ids)],
            )

    def mark_retry_many(
        self, items: t.Sequence[tuple[int, float, str]], *, now: float | None = None
    ) -> None:
        if not items:
            return
        args = [self._row, _num(time.time() if now is None else now)]
        for row_id, next_at, error in items:
            args += [str(int(row_id)), _num(next_at), error]
        with store_errors("reschedule rows"):
            self._retry(keys=[self._open, self._leased, self._idle, self._meta], args=args)

    def mark_dead_many(
        self, items: t.Sequence[tuple[int, str, str | None]], *, now: float | None = None
    ) -> None:
        if not items:
            return
        now = time.time() if now is None else now
        args = [self._row, _num(now)]
        for row_id, reason, code in items:
            args += [str(int(row_id)), reason, "0" if code is None else "1", code or ""]
        with store_errors("move rows to the dead letters"):
            self._kill(
                keys=[
                    self._open,
                    self._leased,
                    self._idle,
                    self._created,
                    self._dead,
                    self._meta,
                ],
                args=args,
            )

    def release(self, ids: t.Collection[int], *, now: float | None = None) -> None:
        if not ids:
            return
        now = time.time() if now is None else now
        with store_errors("release rows"):
            self._release(
                keys=[self._open, self._leased, self._idle],
                args=[self._row, _num(now), *(str(int(i)) for i in ids)],
            )

    def renew_leases(
        self, ids: t.Collection[int], *, owner: str, now: float, lease_seconds: float
    ) -> int:
        if not ids:
            return 0
        with store_errors("renew leases"):
            count = self._renew(
                keys=[self._open, self._leased],
                args=[self._row, owner, _num(now + lease_seconds), *map(str, ids)],
            )
        return int(count)

    def expire_leases(self, is_orphan: t.Callable[[str], bool]) -> int:
        with store_errors("read lease owners"):
            owners = [text(o) for o in self._owners(keys=[self._leased], args=[self._row])]
        orphans = [owner for owner in owners if is_orphan(owner)]
        if not orphans:
            return 0
        # The script re-checks each row's owner: a row claimed by a live owner meanwhile
        # is left alone.
        with store_errors("expire leases"):
            count = self._expire(keys=[self._open, self._leased], args=[self._row, *orphans])
        return int(count)

    # -- status and maintenance -------------------------------------------------------

    def pending_count(self) -> int:
        with store_errors("count the outbox"):
            return int(self.client.zcard(self._open))

    def stats(self, now: float | None = None) -> OutboxStats:
        now = time.time() if now is None else now
        with store_errors("read outbox stats"):
            pending, due, in_flight, meta, dead, oldest = self._stats(
                keys=[self._open, self._leased, self._meta, self._dead, self._created],
                args=[_num(now)],
            )
        delivered, skipped, resends, last_error = meta
        return OutboxStats(
            pending=int(pending),
            due=int(due),
            in_flight=int(in_flight),
            delivered=int(delivered or 0),
            skipped=int(skipped or 0),
            dead=int(dead),
            oldest_pending_age=None if oldest is None else max(0.0, now - float(oldest)),
            last_error=_opt_text(last_error),
            resends=int(resends or 0),
        )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit < 1:
            return []
        fields = [
            "collection",
            "user_id",
            "token",
            "body",
            "attempts",
            "created_at",
            "reason",
            "error_code",
            "died_at",
        ]
        with store_errors("read dead letters"):
            # redis-py types ZRANGE for every option combination; without scores it
            # returns the members only.
            members = t.cast("list[bytes | str]", self.client.zrange(self._dead, 0, limit - 1))
            pipe = self.client.pipeline(transaction=False)
            for m in members:
                pipe.hmget(self.row_key(int(m)), fields)
            records = pipe.execute()
        letters = []
        for m, r in zip(members, records, strict=True):
            if r[0] is None:  # pruned between the two reads: not a dead letter any more
                continue
            letters.append(
                DeadLetter(
                    id=int(m),
                    collection=text(r[0]),
                    user_id=text(r[1]),
                    uniqueness_token=text(r[2]),
                    body_json=text(r[3]),
                    attempts=int(r[4]),
                    created_at=float(r[5]),
                    reason=text(r[6]),
                    error_code=_opt_text(r[7]),
                    died_at=float(r[8]),
                )
            )
        return letters

    def retry_dead(self, ids: t.Collection[int] | None = None, *, now: float | None = None) -> int:
        now = time.time() if now is None else now
        keys = [self._open, self._idle, self._created, self._dead]
        moved = 0
        with store_errors("retry dead letters"):
            if ids is None:
                while True:
                    count = int(self._retry_dead(keys=keys, args=[self._row, _num(now), CHUNK]))
                    moved += count
                    if count < CHUNK:
                        return moved
            chosen = [str(int(i)) for i in ids]
            for start in range(0, len(chosen), CHUNK):
                moved += int(
                    self._retry_dead(
                        keys=keys, args=[self._row, _num(now), 0, *chosen[start : start + CHUNK]]
                    )
                )
        return moved

    def prune_delivered(self, older_than_seconds: float, *, now: float | None = None) -> int:
        now = time.time() if now is None else now
        cutoff = _num(now - older_than_seconds)
        pruned = 0
        with store_errors("prune the outbox"):
            while True:
                count = int(self._prune(keys=[self._done], args=[self._row, cutoff, CHUNK]))
                pruned += count
                if count < CHUNK:
                    return pruned

    def drop_delivered_bodies(
        self, older_than_seconds: float, *, now: float | None = None
    ) -> int:
        now = time.time() if now is None else now
        cutoff = _num(now - older_than_seconds)
        dropped = offset = 0
        with store_errors("drop delivered bodies from the outbox"):
            while True:
                count, read = self._drop_bodies(
                    keys=[self._done, self._meta],
                    args=[self._row, cutoff, CHUNK, offset, _num(RETENTION_SKEW)],
                )
                dropped += int(count)
                offset += int(read)
                if int(read) < CHUNK:
                    return dropped

    def forget_user(
        self, collection: str, user_id: str, *, erased_id: str, now: float | None = None
    ) -> ErasedRows:
        # No index by user: read the rows' (collection, user_id) in slices, pipelined, then
        # erase the matching ones in scripts that check the owner again (atomically).
        now = time.time() if now is None else now
        matches: list[str] = []
        with store_errors("forget a user in the outbox"):
            for index in (self._open, self._done, self._dead):
                start = 0
                while True:
                    members = self.client.zrange(index, start, start + CHUNK - 1)
                    if not members:
                        break
                    start += len(members)
                    pipe = self.client.pipeline(transaction=False)
                    for m in members:
                        pipe.hmget(f"{self._row}{int(text(m))}", "collection", "user_id")
                    for m, (coll, user) in zip(members, pipe.execute(), strict=True):
                        if _opt_text(coll) == collection and _opt_text(user) == user_id:
                            matches.append(str(int(text(m))))
            keys = [
                self._open, self._leased, self._idle, self._created,
                self._done, self._dead, self._meta,
            ]  # fmt: skip
            totals = [0, 0, 0]
            for start in range(0, max(1, len(matches)), CHUNK):
                counts = self._forget(
                    keys=keys,
                    args=[
                        self._row, _num(now), collection, user_id, erased_id,
                        *matches[start : start + CHUNK],
                    ],
                )  # fmt: skip
                totals = [a + int(b) for a, b in zip(totals, counts, strict=True)]
        return ErasedRows(skipped=totals[0], erased=totals[1], dead_letters=totals[2])

    def close(self) -> None:
        if self.close_client:
            self.client.close()


__all__ = ["RedisOutbox"]
