"""Retention and erasure of the personal data the extension keeps (DESIGN §9).

A queued event's body holds personal data (name, IP, user agent, attribution). It is
needed until Keen has the event; after that only the fact matters: who signed up, when,
and how it ended. So:

* **Retention** — :func:`prune`: the bodies of delivered (and skipped) events older than
  ``KEEN_SIGNUP_RETENTION`` are dropped; the row keeps its id, user id, outcome and times.
  The sender does it by itself at most once a minute; ``flask keen-signup prune`` does it
  now.
* **Erasure** — :func:`forget`: one user's personal data leaves the marker ledger, the
  outbox and the dead letters, and, with ``KEEN_MASTER_KEY``, Keen itself (Keen's
  delete-events API, filtered on ``userId``). The marker stays, under
  :func:`~.stores.erased_user_id` (a SHA-256 of the collection and the user id, the same
  scheme as ``keen.uniqueness_token``), so the user's next login is a returning user and
  is never reported again.
"""

from __future__ import annotations

import dataclasses
import typing as t

from .delivery import ErasedRows
from .exceptions import KeenError
from .stores import erased_user_id

if t.TYPE_CHECKING:  # pragma: no cover
    from .state import SignupState

#: The event property that carries the user id (DESIGN §3), used to find their events.
USER_ID_PROPERTY = "userId"


@dataclasses.dataclass(frozen=True)
class ForgetReport:
    """What :func:`forget` did.

    :param erased_id: what the user's id was replaced with.
    :param marker_hashed: the local marker held the raw id and now holds ``erased_id``.
    :param outbox: rows skipped, erased and dead letters deleted (``None``: the outbox
        cannot erase).
    :param keen: ``"deleted"``, ``"not asked"`` (no master key, or ``keen=False``) or
        ``"failed"``.
    :param keen_error: why Keen's deletion failed.
    """

    erased_id: str
    marker_hashed: bool
    outbox: ErasedRows | None
    keen: str
    keen_error: str | None = None


def prune(state: SignupState, retention: float | None = None) -> int:
    """Drop delivered bodies older than ``retention`` (default ``KEEN_SIGNUP_RETENTION``)."""
    seconds = state.settings.retention if retention is None else retention
    return state.outbox.drop_delivered_bodies(seconds)


def forget(state: SignupState, user_id: str, *, keen: bool = True) -> ForgetReport:
    """Erase ``user_id``'s personal data locally and, with a master key, in Keen.

    Local first: the outbox rows still to be sent are skipped before Keen is asked, so a
    queued event cannot land after the deletion (one already on the wire at that instant
    can; running ``forget`` again deletes it).

    :raises StoreError: the local store failed (nothing in Keen was touched then).
    """
    settings = state.settings
    collection = settings.collection
    erased = erased_user_id(collection, user_id)
    try:
        outbox: ErasedRows | None = state.outbox.forget_user(
            collection, user_id, erased_id=erased
        )
    except NotImplementedError:
        outbox = None
    hashed = state.tracker.claimer.forget(user_id)
    if state.tracker.claimer is not state.store:
        hashed = state.store.forget(user_id) or hashed
    # A signup of theirs still in the local spool would be dropped when drained (the
    # marker above exists now, so the drain's claim loses); its bytes go now.
    if state.spool is not None:
        state.spool.erase(user_id)
    if not keen or not settings.master_key:
        return ForgetReport(erased, hashed, outbox, "not asked")
    from .keen_admin import KeenAdminClient

    with KeenAdminClient(
        settings.project_id, settings.master_key, api_url=settings.api_url, timeout=settings.timeout
    ) as admin:
        try:
            admin.delete_user_events(collection, user_id, property_name=USER_ID_PROPERTY)
        except KeenError as exc:
            return ForgetReport(erased, hashed, outbox, "failed", str(exc))
    return ForgetReport(erased, hashed, outbox, "deleted")
