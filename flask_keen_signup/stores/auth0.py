"""The marker in Auth0 ``app_metadata`` — the place the Rule kept it (``signedUp``).

Shared by every host that talks to the tenant, and it survives any local data loss. The
Management API has no compare-and-set, so a claim here is "nobody marked this user yet";
the extension pairs this store with the local SQLite ledger, whose claim is atomic, and
(in background mode) only calls Auth0 from the sender thread, never in the login request.
"""

from __future__ import annotations

import datetime as dt
import typing as t

from ..events import parse_created_at
from . import MarkerState
from . import MarkerStore

if t.TYPE_CHECKING:  # pragma: no cover
    from ..auth0 import ManagementClient


class UserFacts(t.NamedTuple):
    """What the Management API says about a user, for the signup decision."""

    marked: bool
    created_at: dt.datetime | None


class Auth0Store(MarkerStore):
    """``app_metadata[marker]`` via the Management API.

    :param client: a :class:`~flask_keen_signup.auth0.ManagementClient` with
        ``read:users`` and ``update:users_app_metadata``.
    :param marker: the ``app_metadata`` key (``KEEN_SIGNUP_MARKER``, default ``signedUp``).
    """

    def __init__(self, client: ManagementClient, marker: str = "signedUp") -> None:
        self.client = client
        self.marker = marker

    def __repr__(self) -> str:
        return f"<Auth0Store marker={self.marker!r}>"

    def user_facts(self, user_id: str) -> UserFacts:
        """The marker and ``created_at`` of ``user_id``, in one GET."""
        user = self.client.get_user(user_id, fields=["app_metadata", "created_at"])
        metadata = user.get("app_metadata") or {}
        marked = bool(metadata.get(self.marker)) if isinstance(metadata, dict) else False
        return UserFacts(marked=marked, created_at=parse_created_at(user.get("created_at")))

    def lookup(self, user_id: str) -> MarkerState | None:
        return MarkerState.CONFIRMED if self.user_facts(user_id).marked else None

    def claim(self, user_id: str) -> bool:
        return self.lookup(user_id) is None

    def confirm(self, user_id: str) -> None:
        self.client.update_app_metadata(user_id, {self.marker: True})

    def release(self, user_id: str) -> None:
        """Nothing to undo: this store writes only on :meth:`confirm`."""

    def close(self) -> None:
        self.client.close()
