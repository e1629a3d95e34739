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
import threading
import time
import typing as t
from importlib import resources
from urllib.parse import parse_qsl
from urllib.parse import urlencode
from urllib.parse import urlsplit

from ..exceptions import MissingDependencyError
from ..exceptions import StoreError
from . import MarkerState
from . import MarkerStore

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode
    from redis.cluster import RedisCluster
    from redis.commands.core import Script
    from redis.connection import parse_url
    from redis.exceptions import RedisClusterException
    from redis.retry import Retry
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

#: A client of one Redis server or of a Redis Cluster (all keys of one prefix in one slot).
Client: t.TypeAlias = "redis.Redis | RedisCluster"

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_TIMEOUT_OPTIONS = ("socket_timeout", "socket_connect_timeout")

_PENDING = "pending:"
_CONFIRMED = "confirmed:"


def lua(*names: str) -> str:
    """The package's ``lua/<name>.lua`` scripts, concatenated: the shared functions a
    script needs first, then its own body (the files are package data)."""
    folder = resources.files("flask_keen_signup") / "lua"
    return "".join((folder / f"{name}.lua").read_text(encoding="utf-8") for name in names)


#: Functions shared with the outbox's atomic claim-and-enqueue: the server's clock and the
#: claim decision (see the file).
CLAIM_DECISION_LUA = lua("claim_decision")
_CLAIM_LUA = CLAIM_DECISION_LUA + lua("marker_claim")
_RELEASE_LUA = lua("marker_release")


def connect(
    url: str,
    *,
    socket_connect_timeout: float = CONNECT_TIMEOUT,
    socket_timeout: float = SOCKET_TIMEOUT,
    budget: float | None = None,
) -> Client:
    """A client for ``KEEN_SIGNUP_REDIS_URL``.

    ``redis://``, ``rediss://`` (TLS) or ``unix://`` give a :class:`redis.Redis`;
    ``redis+cluster://host:port[,host:port...]/0`` and ``rediss+cluster://`` give a
    :class:`redis.cluster.RedisCluster` (the scheme of Flask-Limiter's storage URLs),
    which discovers the cluster from whichever listed node answers first.

    No connection is made here, so ``init_app`` does not fail when Redis is briefly down:
    the first claim raises :class:`StoreError` instead, which the extension logs without
    breaking the login. (redis-py's cluster client reads the slot map as it is built, so
    that client is built at its first use.) Timeouts are short for the same reason;
    options in the URL's query string (``?socket_timeout=5``) take precedence.

    ``budget`` (the login path's ``KEEN_SIGNUP_STORE_TIMEOUT``) is both timeouts and wins
    over the URL's; a cluster client then also makes one attempt per call, where it would
    otherwise retry a slow or lost node and re-read the slot map for seconds (redirects
    after a resharding or failover, ``MOVED``/``ASK``, are still followed).

    The extension calls it as ``from .stores.redis import connect``: when the ``redis``
    package is missing, that import itself raises :class:`MissingDependencyError` with
    the install hint (see the top of this module).

    :raises ValueError: a malformed URL (``init_app`` should report it as a
        :class:`~flask_keen_signup.exceptions.ConfigurationError`).
    """
    if budget is not None:
        socket_connect_timeout = socket_timeout = budget
    timeouts = {
        "socket_connect_timeout": socket_connect_timeout,
        "socket_timeout": socket_timeout,
    }
    parts = urlsplit(url)
    if parts.scheme.lower() in _CLUSTER_SCHEMES:
        return _cluster(parts, timeouts, budget=budget is not None)
    client: redis.Redis = redis.Redis.from_url(url, health_check_interval=30, **timeouts)
    if budget is not None:
        client.connection_pool.connection_kwargs.update(timeouts)
    return client


def _cluster(parts: t.Any, timeouts: dict[str, float], *, budget: bool) -> RedisCluster:
    """A lazily built :class:`RedisCluster` for a ``redis+cluster://`` URL (see :func:`connect`)."""
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = [node.strip() for node in hosts.split(",") if node.strip()]
    if not nodes:
        raise ValueError("a redis+cluster:// URL needs at least one host:port")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if budget:
        query = [(name, value) for name, value in query if name not in _TIMEOUT_OPTIONS]
    scheme = _CLUSTER_SCHEMES[parts.scheme.lower()]
    login = f"{userinfo}@" if userinfo else ""
    startup: list[ClusterNode] = []
    for node in nodes[1:]:
        host, _, port = node.rpartition(":")
        startup.append(_node(host.strip("[]") or node, int(port or 6379)))
    first = f"{scheme}://{login}{nodes[0]}/0" + (f"?{urlencode(query)}" if query else "")
    _parse_url(first)  # a malformed URL fails here, at init_app
    retry = Retry(NoBackoff(), 0) if budget else None

    def build() -> RedisCluster:
        return RedisCluster(
            url=first,
            startup_nodes=startup,
            retry=retry,
            health_check_interval=30,
            socket_connect_timeout=timeouts["socket_connect_timeout"],
            socket_timeout=timeouts["socket_timeout"],
        )

    return t.cast(RedisCluster, _LazyCluster(build))


_node = t.cast(t.Callable[[str, int], ClusterNode], ClusterNode)  # untyped in redis-py
_parse_url = t.cast(t.Callable[[str], t.Any], parse_url)


class _LazyCluster:
    """A :class:`RedisCluster` built at its first use: its constructor connects (to read the
    slot map), and a Redis that is down while the app starts must cost a logged error at
    the first claim, not a failed ``init_app``. Every attribute is the real client's."""

    def __init__(self, build: t.Callable[[], RedisCluster]) -> None:
        self._build = build
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def _get(self) -> RedisCluster:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build()
                client = self._client
        return client

    def register_script(self, script: str) -> Script:
        """A script bound to this client, hashed without building it (bytes need no encoder)."""
        return Script(t.cast(RedisCluster, self), script.encode("utf-8"))

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self._get(), name)


def is_cluster(client: t.Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (see :func:`connect`)."""
    return isinstance(client, (RedisCluster, _LazyCluster))


def hash_tag(prefix: str) -> str | None:
    """The ``{…}`` hash tag that puts every key starting with ``prefix`` in one cluster
    slot, or ``None``. Redis hashes only what lies between a key's first ``{`` and the
    first ``}`` after it, when that is not empty; the prefix must hold the whole tag, since
    what follows it (a collection name) could close an open one."""
    start = prefix.find("{")
    end = prefix.find("}", start + 1)
    return prefix[start + 1 : end] if start >= 0 and end > start + 1 else None


def check_prefix(client: t.Any, prefix: str, *, name: str = "prefix") -> None:
    """Refuse a cluster client whose ``prefix`` has no hash tag (the scripts touch keys of
    one prefix together, and a cluster runs a script only on keys of one slot).

    :raises ValueError: naming ``name``, the setting to fix.
    """
    if is_cluster(client) and hash_tag(prefix) is None:
        example = prefix.replace("{", "").replace("}", "") or DEFAULT_PREFIX
        raise ValueError(
            f"{name} {prefix!r} has no {{…}} hash tag, and Redis Cluster needs one so that "
            f"all keys of a deployment share one hash slot: use e.g. '{{{example}}}'"
        )


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
    except (redis.RedisError, RedisClusterException) as exc:
        raise StoreError(f"cannot {what} in Redis: {type(exc).__name__}: {exc}") from exc


def marker_key(prefix: str, collection: str, user_id: str) -> str:
    """The Redis key of one user's marker (see the module docstring for why it is hashed)."""
    digest = hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:32]
    return f"{prefix}:marker:{collection}:{digest}"


def _state(value: t.Any) -> MarkerState:
    # Anything but a pending claim counts as confirmed: an unknown value must never make a
    # user look new again.
    return MarkerState.PENDING if text(value).startswith(_PENDING) else MarkerState.CONFIRMED


def _confirmed() -> str:
    """A confirmed marker's value; the time is informational, from this host's clock (only
    pending claims are compared, with the server's)."""
    return f"{_CONFIRMED}{time.time():.6f}"


class RedisStore(MarkerStore):
    """Markers as Redis strings, shared by every host that uses the same server.

    :param client: a :class:`redis.Redis` or :class:`redis.cluster.RedisCluster` (see
        :func:`connect`). It may decode responses or not. Thread-safe and fork-safe
        (redis-py re-creates its pool in a child).
    :param collection: markers are per collection, like Keen's uniqueness tokens.
    :param prefix: first part of every key, to share one Redis database between apps.
        A cluster client needs a hash tag in it (``"{keen_signup}"``), so that the store's
        and the outbox's keys live in one slot and the claim-and-enqueue script may touch
        them all: without one the constructor raises :class:`ValueError`.
    :param reclaim_after: a *pending* marker older than this many seconds may be claimed
        again (sync mode: a process killed mid-send must not block the user forever).
        ``None`` (background mode) never reclaims: there pending means "durably queued".
    :param close_client: :meth:`close` closes ``client`` (when the extension created it).
    """

    remembered = True

    def __init__(
        self,
        client: Client,
        collection: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        reclaim_after: float | None = None,
        close_client: bool = False,
    ) -> None:
        if reclaim_after is not None and reclaim_after < 0:
            raise ValueError("reclaim_after must be >= 0 or None")
        check_prefix(client, prefix)
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
        return None if value is None else _state(value)

    def claim(self, user_id: str) -> bool:
        with store_errors("claim a marker"):
            won = self._claim(keys=[self.key(user_id)], args=[self.reclaim_arg])
        return int(won) == 1

    def confirm(self, user_id: str) -> None:
        with store_errors("confirm a marker"):
            self.client.set(self.key(user_id), _confirmed())

    def confirm_many(self, user_ids: t.Iterable[str]) -> None:
        """:meth:`confirm` for a batch in one round trip (the sender's ``after_delivered``).

        Not a transaction: each SET is idempotent, so a batch cut short by an error is
        simply confirmed again when the hook is retried.
        """
        stamp = _confirmed()
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
            self.client.set(self.key(user_id), _confirmed(), nx=True)
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
                    if value is not None:
                        counts[_state(value).value] += 1
        return counts

    def close(self) -> None:
        if self.close_client:
            self.client.close()


__all__ = [
    "CLAIM_DECISION_LUA",
    "DEFAULT_PREFIX",
    "Client",
    "RedisStore",
    "check_prefix",
    "connect",
    "hash_tag",
    "is_cluster",
    "marker_key",
]
