"""Store backends: ``KEEN_SIGNUP_STORE``'s name, mapped to the parts it is made of.

Each backend is one small module here that builds its :class:`Parts` from the app's
settings (:class:`Wiring`), and one entry in :data:`REGISTRY`. The rest of the package
asks the parts what they can do (an atomic claim-and-enqueue, a ledger to load known
users from, a place to confirm delivered users, a migration ledger...) and never tests a
backend's type: adding a backend touches no other module. ``tests/test_backends.py``
checks both.

A custom backend is a function ``build(wiring) -> Parts`` and a line::

    from flask_keen_signup.backends import REGISTRY, Backend

    REGISTRY["mystore"] = Backend("mystore", build)

after which ``KEEN_SIGNUP_STORE = "mystore"`` is accepted. A
:class:`~flask_keen_signup.stores.MarkerStore` *instance* in ``KEEN_SIGNUP_STORE`` still
works too: it is wired by :mod:`.custom` (claim, then queue in the SQLite outbox).
"""

from __future__ import annotations

import dataclasses
import typing as t

if t.TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from ..database import Database
    from ..delivery import Outbox
    from ..delivery import QueuedEvent
    from ..migrate import MigrationLedger
    from ..stores import MarkerStore
    from ..stores.auth0 import UserFacts

#: ``claim_and_enqueue(user_id, queued)``: claim the marker and queue the event in one
#: atomic step (one SQLite transaction, one Redis script, one PostgreSQL statement);
#: True only if this call won the claim (and the event is then queued).
ClaimAndEnqueue = t.Callable[[str, "QueuedEvent"], bool]
#: The same for a batch (the spool's drain): one flag per event, in order.
ClaimAndEnqueueMany = t.Callable[[t.Sequence["QueuedEvent"]], list[bool]]
#: ``recent_user_ids(states, limit)``: the newest users whose marker is in ``states``.
RecentUserIds = t.Callable[[t.Sequence[str], int], list[str]]

T = t.TypeVar("T")


class RemoteMarkers(t.Protocol):
    """A marker kept outside the local ledger (Auth0's ``app_metadata``), which the login
    path (sync mode) and the sender check before sending and set after delivery."""

    def user_facts(self, user_id: str) -> UserFacts: ...

    def confirm(self, user_id: str) -> None: ...


class InTransaction(t.Protocol):
    """The claim inside the app's own database transaction (``track_claims(connection=)``)."""

    def lookup(self, connection: t.Any, user_id: str) -> object | None:
        """The user's marker as the app's transaction sees it (``None``: none)."""

    def claim_and_enqueue(self, connection: t.Any, user_id: str, queued: QueuedEvent) -> bool:
        """Claim and queue on ``connection``, in the savepoint :meth:`run` opened."""

    def run(self, connection: t.Any, work: t.Callable[[], T]) -> T:
        """Run ``work`` in a savepoint of the app's transaction on ``connection``."""

    def confirm(self, user_id: str) -> None:
        """Mark the user for good, outside the app's transaction."""


@dataclasses.dataclass(frozen=True)
class Wiring:
    """What a backend's ``build`` may use: the settings and the app's SQLite file.

    :param database: ``KEEN_SIGNUP_DATABASE`` as the sender sees it (long lock waits).
    :param request_database: the same file for the login path: its lock waits are bounded
        by ``KEEN_SIGNUP_STORE_TIMEOUT``.
    :param reclaim_after: in sync mode, the age after which a pending marker belongs to a
        dead request and may be claimed again; ``None`` in background mode.
    """

    settings: Settings
    database: Database
    request_database: Database
    reclaim_after: float | None


@dataclasses.dataclass
class Parts:
    """One app's store and outbox, and what they can do together.

    :param store: the marker store the user configured (``state.store``; erased by
        ``forget``).
    :param claimer: the login path's atomic claimer (the local ledger in front of a remote
        store), through connections bounded by the budget.
    :param outbox: the sender's outbox.
    :param request_outbox: the login path's view of the outbox (bounded by the budget).
    :param confirm_in: where the sender marks delivered users confirmed.
    :param drain_claimer: who decides spooled signups on the sender thread (``None``: the
        login request claimed already, as the per-browser session does).
    :param remote: a remote marker checked and set around delivery (``auth0``).
    :param claim_and_enqueue: the login path's atomic claim-and-enqueue, if the claimer
        and the outbox live in one place; otherwise claim, enqueue, release on failure.
    :param claim_and_enqueue_many: the same for the spool's drain, on the sender's objects.
    :param in_transaction: the claim inside the app's own transaction (``postgres``).
    :param recent_user_ids: the claimer's newest users, to load the known-users set at
        start (:meth:`~flask_keen_signup.tracker.Tracker.load_known_users`).
    :param migration_ledger: builds where ``flask keen-signup migrate`` records users.
    :param wake_on_notify: ``wake_on_notify(wake)``: the outbox calls ``wake`` when another
        process queued an event (PostgreSQL's ``LISTEN/NOTIFY``), so the sender need not poll.
    :param uses_database: the app keeps something in ``KEEN_SIGNUP_DATABASE`` (checked at
        ``init_app``); the spool lives beside it in any case.
    """

    store: MarkerStore
    claimer: MarkerStore
    outbox: Outbox
    request_outbox: Outbox
    confirm_in: MarkerStore
    drain_claimer: MarkerStore | None
    remote: RemoteMarkers | None = None
    claim_and_enqueue: ClaimAndEnqueue | None = None
    claim_and_enqueue_many: ClaimAndEnqueueMany | None = None
    in_transaction: InTransaction | None = None
    recent_user_ids: RecentUserIds | None = None
    migration_ledger: t.Callable[[], MigrationLedger] | None = None
    wake_on_notify: t.Callable[[t.Callable[[], None]], None] | None = None
    uses_database: bool = True


@dataclasses.dataclass(frozen=True)
class Backend:
    """A ``KEEN_SIGNUP_STORE`` name and how to build its :class:`Parts`.

    :param build: ``build(wiring)``; raises
        :class:`~flask_keen_signup.exceptions.ConfigurationError` for a setting it cannot use.
    """

    name: str
    build: t.Callable[[Wiring], Parts]


def _lazy(module: str) -> t.Callable[[Wiring], Parts]:
    """``build`` of the backend module ``module``, imported only when that store is used
    (the Redis and PostgreSQL clients are optional dependencies)."""

    def build(wiring: Wiring) -> Parts:
        import importlib

        built: Parts = importlib.import_module(f"{__name__}.{module}").build(wiring)
        return built

    build.__qualname__ = build.__name__ = f"build_{module}"
    return build


#: ``KEEN_SIGNUP_STORE`` names, in the order the docs list them. Add an entry to add one.
REGISTRY: dict[str, Backend] = {
    name: Backend(name, _lazy(name)) for name in ("sqlite", "session", "auth0", "redis", "postgres")
}


def parts_for(store: str | MarkerStore, wiring: Wiring) -> Parts:
    """The parts of ``KEEN_SIGNUP_STORE`` (a registered name, or a store instance)."""
    if isinstance(store, str):
        return REGISTRY[store].build(wiring)
    from .custom import build_for_instance

    return build_for_instance(store, wiring)


__all__ = [
    "REGISTRY",
    "Backend",
    "ClaimAndEnqueue",
    "ClaimAndEnqueueMany",
    "InTransaction",
    "Parts",
    "RemoteMarkers",
    "Wiring",
    "parts_for",
]
