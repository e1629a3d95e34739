"""Where the signedUp marker lives: one small interface, and an in-memory fake beside it.

A marker is per (collection, user). Its life: ``claim`` atomically creates it as
*pending* (only one caller wins, however many threads, processes or hosts race), then
``confirm`` makes it *confirmed* once the signup is safe (delivered to Keen in sync mode,
durably queued in background mode), or ``release`` deletes it so that the next login
tries again. ``lookup`` is the one cheap read a returning user costs.

Backends: :class:`~flask_keen_signup.stores.sqlite.SQLiteStore` (the default),
:class:`~flask_keen_signup.stores.session.SessionStore` (per browser),
:class:`~flask_keen_signup.stores.auth0.Auth0Store` (``app_metadata``, the Rule's own
place). Set ``KEEN_SIGNUP_STORE`` to a name, or to an instance of your own subclass.
"""

from __future__ import annotations

import enum
import threading
import time
import typing as t
from abc import ABC
from abc import abstractmethod

from ..events import uniqueness_token

#: Prefix of a marker's user id once the user was erased (``flask keen-signup forget``).
ERASED_PREFIX = "sha256:"


def erased_user_id(collection: str, user_id: str) -> str:
    """What replaces ``user_id`` in the marker (and the outbox) once the user is erased.

    ``"sha256:"`` + Keen's uniqueness token of the signup (DESIGN §2.1: the SHA-256 of
    ``f"{collection}\n{user_id}"``): not the user id, yet the user's next login computes
    the same value and is recognised as returning, so an erased user is never reported
    again. It is a pseudonym, not anonymity: whoever holds a candidate ``sub`` can check
    it, exactly as with the token Keen stores with every event.
    """
    return ERASED_PREFIX + uniqueness_token(collection, user_id)


class MarkerState(enum.Enum):
    """The state of a user's marker."""

    #: Claimed: the signup is being sent (sync) or is queued in the outbox (background).
    PENDING = "pending"
    #: The signup is done; this user is never reported again.
    CONFIRMED = "confirmed"


class MarkerStore(ABC):
    """The signedUp marker interface. Subclass it to plug in your own storage.

    Implementations must be safe to call from several threads at once, because Flask
    serves requests concurrently.
    """

    #: True when every process sees the same markers and a confirmed (or, in background
    #: mode, pending) marker is never taken back: the extension may then remember signed-up
    #: users in memory and skip the store on their next login.
    remembered: t.ClassVar[bool] = False

    @abstractmethod
    def lookup(self, user_id: str) -> MarkerState | None:
        """The user's marker state, or ``None`` if this user was never claimed."""

    @abstractmethod
    def claim(self, user_id: str) -> bool:
        """Create a pending marker if there is none. True only for the caller that created it."""

    @abstractmethod
    def confirm(self, user_id: str) -> None:
        """Mark the user as signed up for good (creating the marker if needed)."""

    @abstractmethod
    def release(self, user_id: str) -> None:
        """Delete a *pending* marker so the next login retries. A confirmed one stays."""

    def confirm_many(self, user_ids: t.Iterable[str]) -> None:
        """:meth:`confirm` each of ``user_ids`` (the sender, after a delivered batch).

        Stores that can do it in one round trip override it (SQLite: one
        ``executemany``; Redis: one pipeline; PostgreSQL: one statement).
        """
        for user_id in user_ids:
            self.confirm(user_id)

    def forget(self, user_id: str) -> bool:
        """Erasure: keep the user's marker, but under :func:`erased_user_id`, not the id.

        The user stays marked (their next login is a returning user) and the store no
        longer holds their id. Returns whether a marker held the raw id. The default does
        nothing and returns ``False``: right for stores that keep no raw id here (Redis
        keys are hashed already, the session store lives in the browser, the ``auth0``
        store in Auth0's own user profile); a custom store that keeps user ids should
        override it.
        """
        return False

    def close(self) -> None:  # noqa: B027 - optional hook, deliberately not abstract
        """Release resources (connections). Optional."""


class MemoryStore(MarkerStore):
    """Markers in a dict: for tests and single-process experiments. Lost at exit.

    :param reclaim_after: a pending marker older than this many seconds may be claimed
        again (a process that claimed and then died must not block the user forever).
    """

    def __init__(self, *, reclaim_after: float | None = None) -> None:
        self._markers: dict[str, tuple[MarkerState, float]] = {}
        self._lock = threading.Lock()
        self.reclaim_after = reclaim_after

    def lookup(self, user_id: str) -> MarkerState | None:
        entry = self._markers.get(user_id)
        return entry[0] if entry else None

    def claim(self, user_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            entry = self._markers.get(user_id)
            if entry is not None:
                state, claimed_at = entry
                stale = (
                    state is MarkerState.PENDING
                    and self.reclaim_after is not None
                    and now - claimed_at > self.reclaim_after
                )
                if not stale:
                    return False
            self._markers[user_id] = (MarkerState.PENDING, now)
            return True

    def confirm(self, user_id: str) -> None:
        with self._lock:
            self._markers[user_id] = (MarkerState.CONFIRMED, time.monotonic())

    def release(self, user_id: str) -> None:
        with self._lock:
            entry = self._markers.get(user_id)
            if entry is not None and entry[0] is MarkerState.PENDING:
                del self._markers[user_id]
