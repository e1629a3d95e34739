"""Markers in the Flask session: per browser, not per user.

No database and no network, but be clear about what it means: the marker lives in the
browser's session cookie. The same user on another browser or device, or after the
session is cleared — Auth0's quickstart ``/logout`` calls ``session.clear()`` — counts as
a new signup again. Keen's uniqueness token still keeps a single copy in Keen for 31 days,
but after that, or for a user whose session outlives nothing, the numbers drift. Use it
for demos and for apps with no server-side storage at all; use ``sqlite``, ``redis`` or
``auth0`` for real counts.

Only a short hash of ``(collection, user)`` is stored, to keep the cookie small and the
user id out of it.
"""

from __future__ import annotations

import hashlib
import typing as t

from flask import session

from . import MarkerState
from . import MarkerStore

#: The session key holding this extension's markers.
SESSION_KEY = "_keen_signup"


class SessionStore(MarkerStore):
    """The marker as an entry of ``session["_keen_signup"]``. Needs a request context."""

    def __init__(self, collection: str) -> None:
        self.collection = collection

    def _key(self, user_id: str) -> str:
        return hashlib.sha256(f"{self.collection}\n{user_id}".encode()).hexdigest()[:16]

    def lookup(self, user_id: str) -> MarkerState | None:
        value = session.get(SESSION_KEY, {}).get(self._key(user_id))
        try:
            return MarkerState(value) if value else None
        except ValueError:  # a cookie from an unknown version: treat as absent
            return None

    def claim(self, user_id: str) -> bool:
        # A session is read and written by one request at a time per cookie jar; two
        # parallel first logins from one browser both win, and Keen's token dedupes them.
        if self.lookup(user_id) is not None:
            return False
        self._set(user_id, MarkerState.PENDING)
        return True

    def confirm(self, user_id: str) -> None:
        self._set(user_id, MarkerState.CONFIRMED)

    def release(self, user_id: str) -> None:
        markers = dict(session.get(SESSION_KEY, {}))
        if markers.get(self._key(user_id)) == MarkerState.PENDING.value:
            del markers[self._key(user_id)]
            session[SESSION_KEY] = markers

    def confirm_many(self, user_ids: t.Iterable[str]) -> None:
        """Nothing: the sender thread has no browser session to write to. The marker was
        set in the login request already."""

    def _set(self, user_id: str, state: MarkerState) -> None:
        markers = dict(session.get(SESSION_KEY, {}))
        markers[self._key(user_id)] = state.value
        session[SESSION_KEY] = markers
