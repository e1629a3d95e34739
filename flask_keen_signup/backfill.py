"""Report users who signed up before the extension was installed, with their real dates.

``KEEN_SIGNUP_SINCE`` makes the live path mark such users without reporting them; this
reports them once, from the Management API's user listing, with ``keen.timestamp`` set
to their ``created_at``. Each user is queued in the outbox in the same atomic step that
records them as backfilled (a ``keen_signup_backfill`` table in SQLite, or a marker in a
``<collection>#backfill`` namespace in Redis), so running it twice, or again after a
crash, never queues a user twice, even after Keen's 31-day uniqueness window. Their live
marker is confirmed too, so their next login is not a new signup.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing as t
from abc import ABC
from abc import abstractmethod

from .delivery import QueuedEvent
from .events import build_signup_event
from .events import parse_created_at
from .events import uniqueness_token

if t.TYPE_CHECKING:  # pragma: no cover
    from .auth0 import ManagementClient
    from .config import Settings
    from .delivery.redis_outbox import RedisOutbox
    from .delivery.sqlite_outbox import SQLiteOutbox
    from .stores.redis import RedisStore
    from .stores.sqlite import SQLiteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS keen_signup_backfill (
    collection TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    queued_at  REAL NOT NULL,
    PRIMARY KEY (collection, user_id)
) WITHOUT ROWID;
"""

#: The fields read from the Management API for each user.
USER_FIELDS = ("user_id", "created_at", "name", "email", "nickname")


@dataclasses.dataclass
class BackfillReport:
    """What a backfill run did."""

    queued: int = 0
    already_done: int = 0
    too_recent: int = 0
    no_created_at: int = 0


class BackfillLedger(ABC):
    """Remembers who was backfilled, atomically with queueing their event."""

    @abstractmethod
    def done(self, user_id: str) -> bool:
        """Whether ``user_id`` was backfilled already."""

    @abstractmethod
    def queue(self, user_id: str, event: QueuedEvent) -> bool:
        """Record ``user_id`` as backfilled, queue ``event`` and confirm the live marker,
        all or nothing. False if another run got there first."""


class SQLiteBackfillLedger(BackfillLedger):
    """The ``keen_signup_backfill`` table beside the ledger and outbox: one transaction."""

    def __init__(self, ledger: SQLiteStore, outbox: SQLiteOutbox) -> None:
        self.ledger = ledger
        self.outbox = outbox
        ledger.database.add_schema(SCHEMA)

    def done(self, user_id: str) -> bool:
        with self.ledger.database.reading() as conn:
            row = conn.execute(
                "SELECT 1 FROM keen_signup_backfill WHERE collection = ? AND user_id = ?",
                (self.ledger.collection, user_id),
            ).fetchone()
        return row is not None

    def queue(self, user_id: str, event: QueuedEvent) -> bool:
        with self.ledger.database.transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO keen_signup_backfill (collection, user_id, queued_at) "
                "VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (self.ledger.collection, user_id, dt.datetime.now(dt.timezone.utc).timestamp()),
            ).rowcount
            if inserted:
                self.ledger.confirm_in(conn, user_id)
                self.outbox.enqueue_in(conn, event)
        return bool(inserted)


class RedisBackfillLedger(BackfillLedger):
    """A ``<collection>#backfill`` marker claimed with the event in one Lua script."""

    def __init__(self, store: RedisStore, outbox: RedisOutbox) -> None:
        from .stores.redis import RedisStore

        self.store = store
        self.outbox = outbox
        self.backfilled = RedisStore(
            store.client, f"{store.collection}#backfill", prefix=store.prefix
        )

    def done(self, user_id: str) -> bool:
        return self.backfilled.lookup(user_id) is not None

    def queue(self, user_id: str, event: QueuedEvent) -> bool:
        if not self.outbox.claim_and_enqueue(self.backfilled, user_id, event):
            return False
        self.store.confirm(user_id)  # idempotent: a crash before it only costs a lookup later
        return True


def backfill(
    settings: Settings,
    management: ManagementClient,
    ledger: BackfillLedger,
    *,
    before: dt.datetime,
    dry_run: bool = False,
) -> BackfillReport:
    """Queue a signup event for every user created before ``before`` not yet backfilled."""
    report = BackfillReport()
    now = dt.datetime.now(dt.timezone.utc)
    for user in management.iter_users(fields=list(USER_FIELDS)):
        user_id = user.get("user_id")
        created_at = parse_created_at(user.get("created_at"))
        if not isinstance(user_id, str) or not user_id:
            continue
        if created_at is None:
            report.no_created_at += 1
            continue
        if created_at >= before:
            report.too_recent += 1
            continue
        if dry_run:
            if ledger.done(user_id):
                report.already_done += 1
            else:
                report.queued += 1
            continue
        claims = {k: v for k, v in user.items() if k in ("name", "email", "nickname")}
        event = build_signup_event(
            {**claims, "sub": user_id},
            collection=settings.collection,
            ip=None,
            user_agent=None,
            claim_names=settings.claims,
            ip_mode="none",
            addons=(),
            created_at=created_at,
            now=now,
            extra={"backfilled": True},
        )
        queued = QueuedEvent(
            collection=settings.collection,
            user_id=user_id,
            uniqueness_token=uniqueness_token(settings.collection, user_id),
            body=event,
        )
        if ledger.queue(user_id, queued):
            report.queued += 1
        else:
            report.already_done += 1
    return report
