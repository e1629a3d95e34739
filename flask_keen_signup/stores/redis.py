"""The ``redis`` marker store: one Redis shared by every host of the app.

Use it when the app runs on several hosts or containers: a SQLite file is local to one
machine, so two hosts would each claim the same user. Here a claim is one atomic
``SET key pending:<time> NX`` on the shared server, so exactly one caller wins however many
threads, processes or hosts race (see ``docs/redis.md``).

Key layout (``prefix`` defaults to ``keen_signup``)::

    {prefix}:marker:{collection}:{sha256(user_id)[:32] in hex}
        "pending:<claimed_at>"    claimed; the signup is queued (or being sent, in sync mode)
        "confirmed:<confirmed_at>" done; the user is never reported again

The user id is hashed rather than used raw because key names are far more visible than
values: ``SCAN``/``KEYS`` output, ``MONITOR``, the slow log, keyspace notifications and
memory reports all show them, and an Auth0 ``sub`` is personal data. Hashing also gives
fixed-length keys whose characters cannot interfere with Redis Cluster hash tags
(``{...}``). 128 bits of SHA-256 make a collision practically impossible;
:meth:`RedisStore.key` gives the key of a user for support work.

Times in the values come from the Redis server's clock (``TIME`` inside the scripts), so
hosts whose clocks drift still agree on when a pending claim became stale.

This module imports :mod:`redis` at the top on purpose: it is only imported when the app
configures ``KEEN_SIGNUP_STORE = "redis"``, and a missing package then fails at
``init_app`` with :class:`~flask_keen_signup.exceptions.MissingDependencyError` and the
install hint, not with a bare :class:`ImportError` at the first login.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import typing as t

from ..exceptions import MissingDependencyError
from ..exceptions import StoreError
from . import MarkerState
from . import MarkerStore

try:
    import redis
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError(
        "KEEN_SIGNUP_STORE = 'redis' needs the redis package: pip install flask-keen-signup[redis]"
    ) from exc

#: Default key prefix of the store and the outbox.
DEFAULT_PREFIX = "keen_signup"

#: Default socket timeouts of :func:`connect`, in seconds: a dead Redis must cost a login
#: about a second, never Python's default of "forever".
CONNECT_TIMEOUT = 1.0
SOCKET_TIMEOUT = 2.0

_PENDING = "pending:"
_CONFIRMED = "confirmed:"

# Lua prelude shared with the outbox's atomic claim-and-enqueue: the server's clock, and
# the claim decision. It only *reads*; the caller writes, so a script that loses the claim
# (or finds a key of the wrong type) has changed nothing.
CLAIM_DECISION_LUA = """
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
"""

_CLAIM_LUA = (
    CLAIM_DECISION_LUA
    + """
local now = server_now()
if not may_claim(KEYS[1], now, ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], string.format('pending:%.6f', now))
return 1
"""
)

# Delete only a *pending* marker: a confirmed one must survive a late release.
_RELEASE_LUA = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 8) == 'pending:' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def connect(
    url: str,
    *,
    socket_connect_timeout: float = CONNECT_TIMEOUT,
    socket_timeout: float = SOCKET_TIMEOUT,
) -> redis.Redis:
    """A client for ``KEEN_SIGNUP_REDIS_URL`` (``redis://``, ``rediss://`` or ``unix://``).

    No connection is made here (redis-py connects lazily), so ``init_app`` does not fail
    when Redis is briefly down: the first claim raises :class:`StoreError` instead, which
    the extension logs without breaking the login. Timeouts are short for the same reason;
    options in the URL's query string (``?socket_timeout=5``) take precedence.

    The extension calls it as ``from .stores.redis import connect``: when the ``redis``
    package is missing, that import itself raises :class:`MissingDependencyError` with
    the install hint (see the top of this module).

    :raises ValueError: a malformed URL (``init_app`` should report it as a
        :class:`~flask_keen_signup.exceptions.ConfigurationError`).
    """
    client: redis.Redis = redis.Redis.from_url(
        url,
        socket_connect_timeout=socket_connect_timeout,
        socket_timeout=socket_timeout,
        health_check_interval=30,
    )
    return client


def text(value: t.Any) -> str:
    """A reply as ``str``, whether the client decodes responses or not."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


@contextlib.contextmanager
def store_errors(what: str) -> t.Iterator[None]:
    """Turn redis-py's errors into :class:`StoreError`, like the SQLite backends do."""
    try:
        yield
    except redis.RedisError as exc:
        raise StoreError(f"cannot {what} in Redis: {type(exc).__name__}: {exc}") from exc


def marker_key(prefix: str, collection: str, user_id: str) -> str:
    """The Redis key of one user's marker (see the module docstring for why it is hashed)."""
    digest = hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:32]
    return f"{prefix}:marker:{collection}:{digest}"


class RedisStore(MarkerStore):
    """Markers as Redis strings, shared by every host that uses the same server.

    :param client: a :class:`redis.Redis` (see :func:`connect`). It may decode responses
        or not. Thread-safe and fork-safe (redis-py re-creates its pool in a child).
    :param collection: markers are per collection, like Keen's uniqueness tokens.
    :param prefix: first part of every key, to share one Redis database between apps.
        For Redis Cluster use a hash tag (``"{keen_signup}"``) so that the store and the
        outbox keys live in one slot and the claim-and-enqueue script may touch them all.
    :param reclaim_after: a *pending* marker older than this many seconds may be claimed
        again (sync mode: a process killed mid-send must not block the user forever).
        ``None`` (background mode) never reclaims: there pending means "durably queued".
    :param close_client: :meth:`close` closes ``client`` (when the extension created it).
    """

    remembered = True

    def __init__(
        self,
        client: redis.Redis,
        collection: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        reclaim_after: float | None = None,
        close_client: bool = False,
    ) -> None:
        if reclaim_after is not None and reclaim_after < 0:
            raise ValueError("reclaim_after must be >= 0 or None")
        self.client = client
        self.collection = collection
        self.prefix = prefix
        self.reclaim_after = reclaim_after
        self.close_client = close_client
        self._claim = client.register_script(_CLAIM_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self.prefix!r} collection={self.collection!r}>"

    def key(self, user_id: str) -> str:
        """The Redis key of ``user_id``'s marker."""
        return marker_key(self.prefix, self.collection, user_id)

    @property
    def reclaim_arg(self) -> str:
        """``reclaim_after`` as the scripts take it (``''``: never reclaim)."""
        return "" if self.reclaim_after is None else repr(float(self.reclaim_after))

    def lookup(self, user_id: str) -> MarkerState | None:
        with store_errors("read a marker"):
            value = self.client.get(self.key(user_id))
        if value is None:
            return None
        # Anything but a pending claim counts as confirmed: an unknown value must never
        # make a user look new again.
        return MarkerState.PENDING if text(value).startswith(_PENDING) else MarkerState.CONFIRMED

    def claim(self, user_id: str) -> bool:
        with store_errors("claim a marker"):
            won = self._claim(keys=[self.key(user_id)], args=[self.reclaim_arg])
        return int(won) == 1

    def confirm(self, user_id: str) -> None:
        # Informational time from this host's clock; only pending claims are compared.
        with store_errors("confirm a marker"):
            self.client.set(self.key(user_id), f"{_CONFIRMED}{time.time():.6f}")

    def confirm_many(self, user_ids: t.Iterable[str]) -> None:
        """:meth:`confirm` for a batch in one round trip (the sender's ``after_delivered``).

        Not a transaction: each SET is idempotent, so a batch cut short by an error is
        simply confirmed again when the hook is retried.
        """
        stamp = f"{_CONFIRMED}{time.time():.6f}"
        with store_errors("confirm markers"):
            pipe = self.client.pipeline(transaction=False)
            for user_id in user_ids:
                pipe.set(self.key(user_id), stamp)
            pipe.execute()

    def forget(self, user_id: str) -> bool:
        """Erasure: the key is a hash of the id already, so the marker stays as it is; a
        user with no marker yet (a signup still in the local spool) gets a confirmed one,
        so that signup is dropped, never sent. Never held the raw id: ``False``."""
        with store_errors("forget a marker"):
            self.client.set(self.key(user_id), f"{_CONFIRMED}{time.time():.6f}", nx=True)
        return False

    def release(self, user_id: str) -> None:
        with store_errors("release a marker"):
            self._release(keys=[self.key(user_id)])

    def counts(self) -> dict[str, int]:
        """Markers by state, for ``flask keen-signup status``. A ``SCAN``: not for hot paths."""
        counts = {MarkerState.PENDING.value: 0, MarkerState.CONFIRMED.value: 0}
        pattern = f"{self.prefix}:marker:{self.collection}:*"
        with store_errors("count markers"):
            keys = list(self.client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 1000):
                for value in self.client.mget(keys[start : start + 1000]):
                    if value is None:
                        continue
                    state = MarkerState.PENDING if text(value).startswith(_PENDING) else None
                    counts[(state or MarkerState.CONFIRMED).value] += 1
        return counts

    def close(self) -> None:
        if self.close_client:
            self.client.close()


__all__ = ["CLAIM_DECISION_LUA", "DEFAULT_PREFIX", "RedisStore", "connect", "marker_key"]
