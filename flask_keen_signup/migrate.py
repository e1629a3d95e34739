"""``flask keen-signup migrate``: the day-one step for teams leaving the Auth0 Rule.

Until 2026-11-18 a Rule sent each signup to Keen: the seed's version set
``app_metadata.signedUp`` after Keen answered; Auth0's later template kept no marker. On
day one the extension must (a) never report the users the Rule already reported, and (b)
report, once and at their real signup time, the users who signed up while nothing ran.

This module reads every user of the tenant (the Management API, or a file from Auth0's user
export) and decides each one:

- created strictly before ``--reported-until``, or carrying the Rule's marker
  (``app_metadata.signedUp == true``): **marked** in the store, nothing sent;
- any other user whose marker does not exist yet: **reported**: a ``signup`` event with
  ``keen.timestamp`` = their ``created_at``, ``"backfilled": true`` and the same
  ``keen.uniqueness_token`` as a live signup, queued in the outbox *in the same atomic step*
  that marks them;
- a user the store already knows (marked by an earlier run, or signed up live since the
  app was deployed): **already known**, untouched.

Users are read as a stream and decided in chunks, each chunk written atomically, so a run
cut short (crash, Ctrl-C, an Auth0 error) leaves whole chunks behind, and running it again
finishes the job without reporting anyone twice. ``--dry-run`` only reads.

Where marks go (:class:`MigrationLedger`): the SQLite ledger beside the outbox (stores
``sqlite``, ``auth0`` — whose ledger fronts ``app_metadata`` on this host — and ``session``
or a custom store, for which the file's ledger only records who was migrated), Redis, or
PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import sqlite3
import time
import typing as t
from abc import ABC
from abc import abstractmethod
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence

from .delivery import QueuedEvent
from .events import build_signup_event
from .events import parse_created_at
from .events import uniqueness_token
from .exceptions import StoreError
from .stores import erased_user_id

if t.TYPE_CHECKING:  # pragma: no cover
    from .config import Settings
    from .delivery.postgres_outbox import PostgresOutbox
    from .delivery.redis_outbox import RedisOutbox
    from .delivery.sqlite_outbox import SQLiteOutbox
    from .stores.postgres import PostgresStore
    from .stores.redis import RedisStore
    from .stores.sqlite import SQLiteStore

T = t.TypeVar("T")

#: The fields migrate needs from each user (export jobs and paging ask for these only).
USER_FIELDS = ("user_id", "created_at", "name", "email", "nickname", "app_metadata")
#: Claims a backfilled event may carry (still filtered by ``KEEN_SIGNUP_CLAIMS``).
_PROFILE_CLAIMS = ("name", "email", "nickname")
#: Users decided and written per atomic step.
CHUNK_SIZE = 2000
#: Values that mean "true" for the Rule's marker in a CSV export (strings there).
_TRUE_TEXT = frozenset({"true", "1", "yes"})


@dataclasses.dataclass(frozen=True)
class TenantUser:
    """One user of the tenant, as migrate needs it."""

    user_id: str
    created_at: dt.datetime | None
    #: The Rule's ``app_metadata.<marker>`` is true: the Rule reported this user.
    rule_marked: bool
    profile: Mapping[str, t.Any]


def user_from_record(record: Mapping[str, t.Any], marker: str) -> TenantUser | None:
    """Normalise one exported or listed user; ``None`` when it has no usable ``user_id``.

    Accepts the Management API's nested ``app_metadata`` object and an export's flattened
    ``app_metadata.<marker>`` column (``"true"`` in a CSV, ``true`` in NDJSON).
    """
    user_id = record.get("user_id")
    if not isinstance(user_id, str) or not user_id.strip():
        return None
    metadata = record.get("app_metadata")
    value: object = metadata.get(marker) if isinstance(metadata, Mapping) else None
    if value is None:
        value = record.get(f"app_metadata.{marker}")
    rule_marked = value is True or (
        isinstance(value, str) and value.strip().lower() in _TRUE_TEXT
    )
    profile = {
        name: record[name]
        for name in _PROFILE_CLAIMS
        if isinstance(record.get(name), str) and record[name]
    }
    return TenantUser(
        user_id=user_id,
        created_at=parse_created_at(record.get("created_at") or None),
        rule_marked=rule_marked,
        profile=profile,
    )


@dataclasses.dataclass
class MigrationReport:
    """What a run did (or, dry, would do). The CLI prints it as a table."""

    marked: int = 0
    reported: int = 0
    already_known: int = 0
    #: Records without a ``user_id``: nothing can be done with them.
    unusable: int = 0
    #: Users with no ``created_at``, not marked by the Rule: marked, never reported
    #: (reporting them could count a Rule-era user twice).
    no_created_at: int = 0

    def rows(self) -> list[tuple[str, int]]:
        rows = [
            ("marked", self.marked),
            ("reported", self.reported),
            ("already known", self.already_known),
        ]
        if self.no_created_at:
            rows.append(("no created_at (marked)", self.no_created_at))
        if self.unusable:
            rows.append(("no user_id (skipped)", self.unusable))
        return rows


class MigrationLedger(ABC):
    """Where migrate reads and writes markers: beside the outbox, atomically with it."""

    @abstractmethod
    def known(self, user_ids: Sequence[str]) -> set[str]:
        """The users among ``user_ids`` whose marker exists (any state)."""

    @abstractmethod
    def mark(self, user_ids: Sequence[str]) -> set[str]:
        """Create confirmed markers where none exist; return the users actually marked."""

    @abstractmethod
    def report(self, events: Sequence[QueuedEvent]) -> int:
        """For each event: create its user's confirmed marker and queue the event, both
        or neither; users whose marker appeared meanwhile are left alone. Returns how
        many were queued."""


class SQLiteMigrationLedger(MigrationLedger):
    """The ledger table and the outbox of one SQLite file: one transaction per chunk."""

    def __init__(self, ledger: SQLiteStore, outbox: SQLiteOutbox) -> None:
        self.ledger = ledger
        self.outbox = outbox

    def known(self, user_ids: Sequence[str]) -> set[str]:
        collection = self.ledger.collection
        # An erased user's marker is kept under a hash of the id (``forget``): known too.
        names = {user_id: user_id for user_id in user_ids}
        names.update((erased_user_id(collection, user_id), user_id) for user_id in user_ids)
        found: set[str] = set()
        try:
            with self.ledger.database.reading() as conn:
                for part in _chunks(names, 500):
                    marks = ",".join("?" * len(part))
                    found.update(
                        names[name]
                        for (name,) in conn.execute(
                            "SELECT user_id FROM keen_signup_markers WHERE collection = ? "
                            f"AND user_id IN ({marks})",
                            (collection, *part),
                        )
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the marker ledger: {exc}") from exc
        return found

    def mark(self, user_ids: Sequence[str]) -> set[str]:
        marked: set[str] = set()
        now = time.time()
        try:
            with self.ledger.database.transaction() as conn:
                for user_id in user_ids:
                    if self._insert_confirmed(conn, user_id, now):
                        marked.add(user_id)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the marker ledger: {exc}") from exc
        return marked

    def report(self, events: Sequence[QueuedEvent]) -> int:
        queued = 0
        now = time.time()
        try:
            with self.ledger.database.transaction() as conn:
                for event in events:
                    if self._insert_confirmed(conn, event.user_id, now):
                        self.outbox.enqueue_in(conn, event, now=now)
                        queued += 1
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the marker ledger and outbox: {exc}") from exc
        return queued

    def _insert_confirmed(self, conn: sqlite3.Connection, user_id: str, now: float) -> bool:
        cursor = conn.execute(
            "INSERT INTO keen_signup_markers (collection, user_id, state, claimed_at, "
            "confirmed_at) VALUES (?, ?, 'confirmed', ?, ?) "
            "ON CONFLICT (collection, user_id) DO NOTHING",
            (self.ledger.collection, user_id, now, now),
        )
        return cursor.rowcount == 1


class RedisMigrationLedger(MigrationLedger):
    """Markers and outbox in one Redis: pipelined reads and marks, a Lua script per report."""

    def __init__(self, store: RedisStore, outbox: RedisOutbox) -> None:
        self.store = store
        self.outbox = outbox

    def known(self, user_ids: Sequence[str]) -> set[str]:
        from .stores.redis import store_errors

        found: set[str] = set()
        with store_errors("read markers"):
            for part in _chunks(user_ids, 1000):
                values = self.store.client.mget([self.store.key(u) for u in part])
                found.update(u for u, v in zip(part, values, strict=True) if v is not None)
        return found

    def mark(self, user_ids: Sequence[str]) -> set[str]:
        from .stores.redis import store_errors

        stamp = f"confirmed:{time.time():.6f}"
        marked: set[str] = set()
        with store_errors("write markers"):
            for part in _chunks(user_ids, 1000):
                pipe = self.store.client.pipeline(transaction=False)
                for user_id in part:
                    pipe.set(self.store.key(user_id), stamp, nx=True)
                marked.update(u for u, ok in zip(part, pipe.execute(), strict=True) if ok)
        return marked

    def report(self, events: Sequence[QueuedEvent]) -> int:
        queued = 0
        for event in events:
            # Claim and enqueue in one script, then confirm: a crash in between leaves a
            # pending marker, which in background mode means "queued" and is never reclaimed.
            if self.outbox.claim_and_enqueue(self.store, event.user_id, event):
                self.store.confirm(event.user_id)
                queued += 1
        return queued


class PostgresMigrationLedger(MigrationLedger):
    """Markers and outbox in one PostgreSQL: each call one statement (a chunk at a time)."""

    def __init__(self, store: PostgresStore, outbox: PostgresOutbox) -> None:
        self.store = store
        self.outbox = outbox

    def known(self, user_ids: Sequence[str]) -> set[str]:
        return self.store.known(user_ids)

    def mark(self, user_ids: Sequence[str]) -> set[str]:
        return self.store.mark(user_ids)

    def report(self, events: Sequence[QueuedEvent]) -> int:
        return self.outbox.report_confirmed(self.store, events)


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of at most ``size``, read lazily (a whole tenant never in memory)."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class Migration:
    """Decides and records every user of a tenant. See the module doc.

    :param reported_until: users created strictly before this instant were reported by
        the Rule (or are older than it): they are marked, never sent.
    :param on_marked: called with the users newly marked in each chunk (the CLI's
        ``--set-app-metadata`` patches them in Auth0).
    """

    def __init__(
        self,
        settings: Settings,
        ledger: MigrationLedger,
        *,
        reported_until: dt.datetime,
        dry_run: bool = False,
        on_marked: t.Callable[[Sequence[str]], None] | None = None,
        clock: t.Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.reported_until = reported_until
        self.dry_run = dry_run
        self.on_marked = on_marked
        self.clock = clock
        self.report = MigrationReport()

    def run(
        self, records: Iterable[Mapping[str, t.Any]], *, chunk_size: int = CHUNK_SIZE
    ) -> MigrationReport:
        """Decide every record; returns the totals (also kept in :attr:`report`)."""
        marker = self.settings.marker
        users = (user_from_record(record, marker) for record in records)
        for chunk in _chunks(users, chunk_size):
            self._run_chunk(chunk)
        return self.report

    def _run_chunk(self, chunk: list[TenantUser | None]) -> None:
        report = self.report
        users: dict[str, TenantUser] = {}
        for user in chunk:
            if user is None:
                report.unusable += 1
            elif user.user_id in users:
                report.already_known += 1  # listed twice (a user signing up mid-export)
            else:
                users[user.user_id] = user
        known = self.ledger.known(list(users))
        report.already_known += len(known)
        to_mark: list[str] = []
        undated: list[str] = []
        to_report: list[TenantUser] = []
        for user_id, user in users.items():
            if user_id in known:
                continue
            if user.rule_marked or (
                user.created_at is not None and user.created_at < self.reported_until
            ):
                to_mark.append(user_id)
            elif user.created_at is None:
                undated.append(user_id)
            else:
                to_report.append(user)
        if self.dry_run:
            report.marked += len(to_mark)
            report.no_created_at += len(undated)
            report.reported += len(to_report)
            return
        marked = self.ledger.mark(to_mark + undated)
        report.marked += sum(1 for user_id in to_mark if user_id in marked)
        report.no_created_at += sum(1 for user_id in undated if user_id in marked)
        # Marked meanwhile by a live login on the same store: already known.
        report.already_known += len(to_mark) + len(undated) - len(marked)
        if marked and self.on_marked is not None:
            self.on_marked(sorted(marked))
        queued = self.ledger.report([self._event(user) for user in to_report])
        report.reported += queued
        report.already_known += len(to_report) - queued

    def _event(self, user: TenantUser) -> QueuedEvent:
        settings = self.settings
        body = build_signup_event(
            {**user.profile, "sub": user.user_id},
            collection=settings.collection,
            ip=None,
            user_agent=None,
            claim_names=settings.claims,
            ip_mode="none",
            addons=(),
            created_at=user.created_at,
            now=self.clock(),
            extra={"backfilled": True},
        )
        return QueuedEvent(
            collection=settings.collection,
            user_id=user.user_id,
            uniqueness_token=uniqueness_token(settings.collection, user.user_id),
            body=body,
        )
