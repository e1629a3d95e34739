"""Report users who signed up before the extension was installed, with their real dates.

``KEEN_SIGNUP_SINCE`` makes the live path mark such users without reporting them; this
reports them once, from the Management API's user listing, with ``keen.timestamp`` set
to their ``created_at``. Each user is queued in the outbox in the same transaction that
records them in a ``keen_signup_backfill`` table, so running it twice (or after a crash)
never queues a user twice, even after Keen's 31-day uniqueness window.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing as t

from .delivery import QueuedEvent
from .events import build_signup_event
from .events import parse_created_at
from .events import uniqueness_token

if t.TYPE_CHECKING:  # pragma: no cover
    from .auth0 import ManagementClient
    from .config import Settings
    from .delivery.sqlite_outbox import SQLiteOutbox
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


def backfill(
    settings: Settings,
    management: ManagementClient,
    ledger: SQLiteStore,
    outbox: SQLiteOutbox,
    *,
    before: dt.datetime,
    dry_run: bool = False,
) -> BackfillReport:
    """Queue a signup event for every user created before ``before`` not yet backfilled."""
    database = ledger.database
    database.add_schema(SCHEMA)
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
        if dry_run:
            with database.reading() as conn:
                done = conn.execute(
                    "SELECT 1 FROM keen_signup_backfill WHERE collection = ? AND user_id = ?",
                    (settings.collection, user_id),
                ).fetchone()
            if done:
                report.already_done += 1
            else:
                report.queued += 1
            continue
        with database.transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO keen_signup_backfill (collection, user_id, queued_at) "
                "VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (settings.collection, user_id, now.timestamp()),
            ).rowcount
            if inserted:
                ledger.confirm_in(conn, user_id)
                outbox.enqueue_in(
                    conn,
                    QueuedEvent(
                        collection=settings.collection,
                        user_id=user_id,
                        uniqueness_token=uniqueness_token(settings.collection, user_id),
                        body=event,
                    ),
                )
        if inserted:
            report.queued += 1
        else:
            report.already_done += 1
    return report
