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
so a script that fails on a bad key writes nothing. The scripts are the package's
``lua/outbox_<name>.lua`` files, each run after the prelude ``lua/outbox.lua``, which
names the keys and describes them (``P:row:<id>`` hashes and ``P:open``, ``P:leased``,
``P:idle``, ``P:created``, ``P:done``, ``P:dead`` sorted sets, with ``P = {prefix}:outbox``;
also in ``docs/redis.md``). Times are the callers' wall-clock seconds (the
:class:`~.Outbox` contract), stored as the exact ``repr`` of the float the caller passed.

Claiming is ``ZRANGEBYSCORE P:open -inf now LIMIT n``, then for each row: attempts + 1,
owner set, score moved to ``now + lease``. A leased row is therefore invisible to other
claimers until its lease expires, and a row whose owner vanished is claimed again after it
(counted in ``resends``, since the first claim recorded no outcome).

Durability is Redis's: see ``docs/redis.md`` for AOF settings.

Redis Cluster. Every script declares in ``KEYS`` all the outbox's indexes and counters
(and the claim-and-enqueue script the user's marker). The row hashes are the one exception:
which rows a script touches is known only inside it (``ZRANGEBYSCORE``), so it computes
``P:row:<id>`` from the row prefix it gets as ``ARGV[1]``. That is safe in a cluster by
construction: the prefix must carry a ``{…}`` hash tag (the constructor refuses a cluster
client otherwise), so every row key hashes to the slot of the declared keys, and Redis
runs the script on the node that owns it.
"""

from __future__ import annotations

import time
import typing as t

from ..stores.redis import DEFAULT_PREFIX
from ..stores.redis import RedisStore
from ..stores.redis import check_prefix
from ..stores.redis import is_cluster
from ..stores.redis import lua
from ..stores.redis import store_errors
from ..stores.redis import text
from . import DeadLetter
from . import ErasedRows
from . import Outbox
from . import OutboxRow
from . import QueuedEvent

if t.TYPE_CHECKING:  # at run time the import of ..stores.redis checked the dependency
    from ..stores.redis import Client

#: Rows handled per script call by the bulk maintenance operations (prune, retry all):
#: a script blocks the whole server while it runs, so long jobs go in slices.
CHUNK = 1000

#: Clock skew between hosts tolerated by the retention pass, in seconds.
RETENTION_SKEW = 3600.0

#: The keys (``{prefix}:outbox:<name>``) every script declares, in the order of the
#: prelude's ``KEYS``.
_KEYS = ("seq", "open", "leased", "idle", "created", "done", "dead", "meta")

#: The scripts: ``lua/outbox_<name>.lua``, each run after the prelude ``lua/outbox.lua``.
_SCRIPTS = (
    "enqueue", "claim_and_enqueue", "claim", "finish", "confirming", "retry", "dead",
    "release", "renew", "owners", "expire", "retry_dead", "prune", "drop_bodies", "forget",
    "stats",
)  # fmt: skip
#: The files some scripts need between the prelude and their own.
_NEEDS = {
    "enqueue": ("outbox_enqueue_lib",),
    "claim_and_enqueue": ("outbox_enqueue_lib", "claim_decision"),
}
_SOURCES = {name: lua("outbox", *_NEEDS.get(name, ()), f"outbox_{name}") for name in _SCRIPTS}

#: The fields every row has, in the order the claim script returns them.
_ROW_FIELDS = ("collection", "user_id", "token", "body", "attempts", "created_at")


def _num(value: float) -> str:
    """A float as the exact text Redis and Lua parse back to the same double."""
    return repr(float(value))


def _at(now: float | None) -> str:
    """``now`` (default: the wall clock) as the scripts take times."""
    return _num(time.time() if now is None else now)


def _opt_text(value: t.Any) -> str | None:
    return None if value is None else text(value)


def _row_fields(r: t.Sequence[t.Any]) -> dict[str, t.Any]:
    """:data:`_ROW_FIELDS` from a reply, as :class:`OutboxRow` and :class:`DeadLetter` take them."""
    return {
        "collection": text(r[0]),
        "user_id": text(r[1]),
        "uniqueness_token": text(r[2]),
        "body_json": text(r[3]),
        "attempts": int(r[4]),
        "created_at": float(r[5]),
    }


def _event_args(event: QueuedEvent) -> list[str]:
    return [event.collection, event.user_id, event.uniqueness_token, event.body_json]


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
        self._row = f"{prefix}:outbox:row:"
        self._key = {name: f"{prefix}:outbox:{name}" for name in _KEYS}
        self._keys = list(self._key.values())
        self._scripts = {name: client.register_script(source) for name, source in _SOURCES.items()}

    def __repr__(self) -> str:
        return f"<RedisOutbox prefix={self.prefix!r}>"

    def row_key(self, row_id: int) -> str:
        """The key of one row's hash (for support work and tests)."""
        return f"{self._row}{row_id}"

    def _run(
        self, script: str, what: str, *args: t.Any, marker: str = "", client: t.Any = None
    ) -> t.Any:
        """Run ``script`` with every outbox key (then ``marker``, if given) and the row
        prefix as its first argument; Redis's errors raise :class:`StoreError`."""
        keys = [*self._keys, marker] if marker else self._keys
        with store_errors(what):
            return self._scripts[script](keys=keys, args=[self._row, *args], client=client)

    def _until_short(self, script: str, what: str, *args: t.Any) -> int:
        """Run ``script`` (on :data:`CHUNK` rows a call) until a call does fewer."""
        total = 0
        while True:
            count = int(self._run(script, what, *args))
            total += count
            if count < CHUNK:
                return total

    def _members(self, index: str, start: int, stop: int) -> list[bytes | str]:
        # redis-py types ZRANGE for every option combination; without scores it returns
        # the members only.
        return t.cast("list[bytes | str]", self.client.zrange(self._key[index], start, stop))

    def _read_rows(self, members: t.Sequence[t.Any], *fields: str) -> list[list[t.Any]]:
        """``fields`` of the rows of index ``members``, in one round trip (a pipeline)."""
        pipe = self.client.pipeline(transaction=False)
        for m in members:
            pipe.hmget(self.row_key(int(m)), fields)
        return t.cast("list[list[t.Any]]", pipe.execute())

    # -- request path -----------------------------------------------------------------

    def enqueue(self, event: QueuedEvent, *, now: float | None = None) -> int:
        return int(self._run("enqueue", "enqueue in the outbox", _at(now), *_event_args(event)))

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
        return int(self._claim_and_enqueue(store, user_id, event, _at(now))) > 0

    def _claim_and_enqueue(
        self, store: RedisStore, user_id: str, event: QueuedEvent, now: str, client: t.Any = None
    ) -> t.Any:
        args = [now, *_event_args(event), store.reclaim_arg]
        what = "claim and enqueue"
        return self._run("claim_and_enqueue", what, *args, marker=store.key(user_id), client=client)

    def claim_and_enqueue_many(
        self, store: RedisStore, events: t.Sequence[QueuedEvent], *, now: float | None = None
    ) -> list[bool]:
        """:meth:`claim_and_enqueue` for many users in one round trip (a pipeline).

        Each user's claim-and-enqueue is still its own atomic script; the pipeline only
        saves the round trips (the sender deciding a spool of thousands of signups). On a
        Redis Cluster it is one script call after another.
        """
        at = _at(now)
        if is_cluster(self.client):  # redis-py 5 refuses scripts in a cluster pipeline
            return [int(self._claim_and_enqueue(store, e.user_id, e, at)) > 0 for e in events]
        with store_errors("claim and enqueue"):
            pipe = self.client.pipeline(transaction=False)
            for event in events:
                self._claim_and_enqueue(store, event.user_id, event, at, client=pipe)
            return [int(row_id) > 0 for row_id in pipe.execute()]

    # -- storage primitives (see Outbox) -----------------------------------------------

    def _lease_due(
        self, limit: int, now: float, until: float, owner: str, flush_since: float | None
    ) -> list[OutboxRow]:
        since = "" if flush_since is None else _num(flush_since)
        args = [_num(now), _num(until), owner, limit, since]
        return [
            OutboxRow(
                id=int(r[0]),
                **_row_fields(r[1:7]),
                next_attempt_at=until,
                last_error=_opt_text(r[7]),
                state=text(r[8]),
                first_failed_at=None if len(r) < 10 or r[9] is None else float(r[9]),
            )
            for r in self._run("claim", "claim from the outbox", *args)
        ]

    def _set_done(self, state: str, ids: list[int], reasons: list[str] | None, now: float) -> None:
        pairs = zip(ids, reasons or [""] * len(ids), strict=True)
        args = [part for pair in pairs for part in pair]
        keep = "1" if self.keep_delivered else "0"
        self._run("finish", f"mark rows {state}", state, _num(now), keep, *args)

    def _set_confirming(self, ids: list[int], next_attempt_at: float, error: str) -> None:
        self._run("confirming", "mark rows confirming", _num(next_attempt_at), error, *ids)

    def _set_retry(self, items: list[tuple[int, float, str]], now: float) -> None:
        args = [part for i, at, error in items for part in (i, _num(at), error)]
        self._run("retry", "reschedule rows", _num(now), *args)

    def _to_dead(self, items: list[tuple[int, str, str | None]], now: float) -> None:
        args: list[t.Any] = []
        for row_id, reason, code in items:
            args += [row_id, reason, "0" if code is None else "1", code or ""]
        self._run("dead", "move rows to the dead letters", _num(now), *args)

    def _unlease(self, ids: list[int], now: float) -> None:
        self._run("release", "release rows", _num(now), *ids)

    def _extend_leases(self, ids: list[int], owner: str, until: float) -> int:
        return int(self._run("renew", "renew leases", owner, _num(until), *ids))

    def _lease_owners(self) -> list[str]:
        return [text(owner) for owner in self._run("owners", "read lease owners")]

    def _expire_owners(self, owners: list[str]) -> int:
        # The script re-checks each row's owner: a row claimed by a live owner meanwhile
        # is left alone.
        return int(self._run("expire", "expire leases", *owners))

    def pending_count(self) -> int:
        with store_errors("count the outbox"):
            return int(self.client.zcard(self._key["open"]))

    def _counts(self, now: float) -> tuple[t.Any, ...]:
        reply = self._run("stats", "read outbox stats", _num(now))
        pending, due, in_flight, (delivered, skipped, resends, error), dead, oldest = reply
        return pending, due, in_flight, oldest, dead, delivered, skipped, resends, _opt_text(error)

    def _read_dead(self, limit: int) -> list[DeadLetter]:
        with store_errors("read dead letters"):
            members = self._members("dead", 0, limit - 1)
            records = self._read_rows(members, *_ROW_FIELDS, "reason", "error_code", "died_at")
        return [
            DeadLetter(
                id=int(m),
                **_row_fields(r),
                reason=text(r[6]),
                error_code=_opt_text(r[7]),
                died_at=float(r[8]),
            )
            for m, r in zip(members, records, strict=True)
            if r[0] is not None  # pruned between the two reads: not a dead letter any more
        ]

    def _replay_dead(self, ids: list[int] | None, now: float) -> int:
        at, what = _num(now), "retry dead letters"
        if ids is None:
            return self._until_short("retry_dead", what, at, CHUNK)
        return sum(
            int(self._run("retry_dead", what, at, 0, *ids[start : start + CHUNK]))
            for start in range(0, len(ids), CHUNK)
        )

    def _delete_done(self, cutoff: float) -> int:
        return self._until_short("prune", "prune the outbox", _num(cutoff), CHUNK)

    def _empty_bodies(self, cutoff: float) -> int:
        dropped = offset = 0
        while True:
            args = [_num(cutoff), CHUNK, offset, _num(RETENTION_SKEW)]
            count, read = self._run("drop_bodies", "drop delivered bodies from the outbox", *args)
            dropped += int(count)
            offset += int(read)
            if int(read) < CHUNK:
                return dropped

    def _erase_user(self, collection: str, user_id: str, erased_id: str, now: float) -> ErasedRows:
        # No index by user: read the rows' (collection, user_id) in slices, pipelined, then
        # erase the matching ones in scripts that check the owner again (atomically).
        what = "forget a user in the outbox"
        matches: list[int] = []
        with store_errors(what):
            for index in ("open", "done", "dead"):
                start = 0
                while members := self._members(index, start, start + CHUNK - 1):
                    start += len(members)
                    owners = self._read_rows(members, "collection", "user_id")
                    for m, (coll, user) in zip(members, owners, strict=True):
                        if _opt_text(coll) == collection and _opt_text(user) == user_id:
                            matches.append(int(m))
        totals = [0, 0, 0]
        for start in range(0, max(1, len(matches)), CHUNK):
            args = [_num(now), collection, user_id, erased_id, *matches[start : start + CHUNK]]
            counts = self._run("forget", what, *args)
            totals = [a + int(b) for a, b in zip(totals, counts, strict=True)]
        return ErasedRows(*totals)

    def close(self) -> None:
        if self.close_client:
            self.client.close()


__all__ = ["RedisOutbox"]
