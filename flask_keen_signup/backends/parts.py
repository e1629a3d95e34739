"""The parts a store backend is made of (:class:`Parts`) and what builds them (:class:`Wiring`).

Their own module so that each backend module can import them without importing the
registry in :mod:`flask_keen_signup.backends` (which imports the backends: no cycle).
:attr:`Parts.claim_and_enqueue` and :attr:`Parts.claim_and_enqueue_many` are the one
"claim the marker and queue the event" step every caller uses: the backend's atomic one,
else :func:`claim_then_enqueue`.
"""

from __future__ import annotations

import dataclasses
import functools
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


def claim_then_enqueue(
    claimer: MarkerStore | None, outbox: Outbox, events: t.Sequence[QueuedEvent]
) -> list[bool]:
    """Claim each user, queue the event if won, release the claim if queueing failed.

    For a claimer and an outbox that live apart. ``claimer`` ``None``: the claim was made
    in the login request already (the per-browser session), so the events are only queued.
    """
    won: list[bool] = []
    for event in events:
        if claimer is not None and not claimer.claim(event.user_id):
            won.append(False)
            continue
        try:
            outbox.enqueue(event)
        except BaseException:
            if claimer is not None:
                claimer.release(event.user_id)
            raise
        won.append(True)
    return won


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
        and the outbox live in one place; left out, :func:`claim_then_enqueue` on
        ``claimer`` and ``request_outbox``.
    :param claim_and_enqueue_many: the same for the spool's drain, on the sender's objects
        (left out: :func:`claim_then_enqueue` on ``drain_claimer`` and ``outbox``).
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
    # Left out (None), __post_init__ puts the claim-then-enqueue fallback in their place.
    claim_and_enqueue: ClaimAndEnqueue = t.cast("ClaimAndEnqueue", None)
    claim_and_enqueue_many: ClaimAndEnqueueMany = t.cast("ClaimAndEnqueueMany", None)
    in_transaction: InTransaction | None = None
    recent_user_ids: RecentUserIds | None = None
    migration_ledger: t.Callable[[], MigrationLedger] | None = None
    wake_on_notify: t.Callable[[t.Callable[[], None]], None] | None = None
    uses_database: bool = True

    def __post_init__(self) -> None:
        given = vars(self)  # typed as always set: read what the backend passed
        if given["claim_and_enqueue"] is None:
            claimer, outbox = self.claimer, self.request_outbox
            self.claim_and_enqueue = lambda _, queued: claim_then_enqueue(
                claimer, outbox, [queued]
            )[0]
        if given["claim_and_enqueue_many"] is None:
            self.claim_and_enqueue_many = functools.partial(
                claim_then_enqueue, self.drain_claimer, self.outbox
            )
