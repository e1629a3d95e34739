"""``KEEN_SIGNUP_STORE = "postgres"``: many hosts, in the app's own PostgreSQL database.

Markers and outbox are claimed in one statement (``INSERT … ON CONFLICT DO NOTHING``
feeding the outbox's insert). One object each serves both paths: the login path's
methods use the pool bounded by the budget, the sender's its own pool with long timeouts
(see :mod:`flask_keen_signup.postgres`). ``track_claims(connection=...)`` records the
signup inside the app's own transaction (:class:`AppTransaction`).
"""

from __future__ import annotations

import functools
import typing as t

from .._credentials import url_error  # the message masks the URL's pieces
from ..exceptions import ConfigurationError
from .parts import Parts
from .parts import Wiring

if t.TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from ..delivery import QueuedEvent
    from ..delivery.postgres_outbox import PostgresOutbox
    from ..stores.postgres import PostgresStore

T = t.TypeVar("T")


class AppTransaction:
    """The claim on the app's own connection, in a savepoint of its transaction."""

    def __init__(self, store: PostgresStore, outbox: PostgresOutbox) -> None:
        self.store = store
        self.outbox = outbox

    def lookup(self, connection: t.Any, user_id: str) -> object | None:
        # The tables must exist before the app's transaction reads them: usually the
        # sender or the known-users thread created them already (then this is a flag read).
        self.store.database.ensure_schema()
        return self.store.lookup_in(connection, user_id)

    def claim_and_enqueue(self, connection: t.Any, user_id: str, queued: QueuedEvent) -> bool:
        return self.outbox.claim_and_enqueue(
            self.store, user_id, queued, connection=connection, savepoint=False
        )

    def run(self, connection: t.Any, work: t.Callable[[], T]) -> T:
        return self.outbox.in_app_transaction(connection, work)

    def confirm(self, user_id: str) -> None:
        self.store.confirm(user_id)


class MigrationLedger:
    """``flask keen-signup migrate``'s marks: each call one statement (a chunk at a time)."""

    def __init__(self, store: PostgresStore, outbox: PostgresOutbox) -> None:
        self.known = store.known
        self.mark = store.mark
        self.report = functools.partial(outbox.report_confirmed, store)


def validate(settings: Settings) -> None:
    """``KEEN_SIGNUP_DATABASE_URL`` is required (its form is checked with the key's)."""
    if settings.enabled and not settings.database_url:
        raise ConfigurationError(
            "KEEN_SIGNUP_DATABASE_URL is required with KEEN_SIGNUP_STORE = 'postgres' "
            "(e.g. postgresql://user@db.example.com/app; FLASK_KEEN_SIGNUP_DATABASE_URL in the "
            "environment with app.config.from_prefixed_env())"
        )


def build(wiring: Wiring) -> Parts:
    from ..delivery.postgres_outbox import PostgresOutbox
    from ..postgres import PostgresDatabase
    from ..postgres import parse_url
    from ..postgres_wake import POLL_INTERVAL
    from ..stores.postgres import PostgresStore

    settings = wiring.settings
    url = t.cast(str, settings.database_url)
    listen_url = settings.database_listen_url
    if listen_url:
        try:
            parse_url(listen_url)
        except ValueError as exc:
            raise url_error("KEEN_SIGNUP_DATABASE_LISTEN_URL", exc, listen_url) from None
    try:
        database = PostgresDatabase(
            url,
            schema=settings.database_schema,
            timeout=settings.store_timeout,
            listen_url=listen_url,
        )
    except ValueError as exc:
        raise url_error("KEEN_SIGNUP_DATABASE_URL", exc, url) from None
    store = PostgresStore(
        database, settings.collection, reclaim_after=wiring.reclaim_after, close_database=True
    )
    outbox = PostgresOutbox(database, keep_delivered=settings.keep_delivered)
    if settings.flush_interval > POLL_INTERVAL:  # without LISTEN: still within a second
        outbox.poll_interval = POLL_INTERVAL
    return Parts(
        store=store,
        claimer=store,
        outbox=outbox,
        request_outbox=outbox,
        confirm_in=store,
        drain_claimer=store,
        claim_and_enqueue=functools.partial(outbox.claim_and_enqueue, store),
        claim_and_enqueue_many=functools.partial(outbox.claim_and_enqueue_many, store),
        in_transaction=AppTransaction(store, outbox),
        recent_user_ids=lambda states, limit: store.recent_user_ids(states, limit=limit),
        migration_ledger=lambda: MigrationLedger(store, outbox),
        wake_on_notify=outbox.wake_on_notify,
        uses_database=False,
    )
