"""What the sender does around a delivery, for the marker stores.

Runs on the sender thread, never in a login request. After Keen accepted a batch the
local ledger's markers become *confirmed* (they were *pending*: queued). With the
``auth0`` store, the user's ``app_metadata`` is checked before sending (already marked, or
created before ``KEEN_SIGNUP_SINCE``: skipped) and set after delivery; a failed PATCH is
retried durably by the sender without writing to Keen again.
"""

from __future__ import annotations

import logging
import typing as t

from ._text import printable
from .delivery import DeliveryHooks
from .delivery import OutboxRow
from .exceptions import RemoteError
from .stores import MarkerStore
from .stores.auth0 import Auth0Store
from .stores.session import SessionStore

if t.TYPE_CHECKING:  # pragma: no cover
    from .config import Settings

logger = logging.getLogger(__name__)


class MarkerHooks(DeliveryHooks):
    """Keep the markers in step with deliveries. See the module doc."""

    def __init__(self, settings: Settings, *, store: MarkerStore, ledger: MarkerStore) -> None:
        self.settings = settings
        self.ledger = ledger
        self.remote = store if isinstance(store, Auth0Store) else None

    def _confirm_locally(self, user_ids: t.Sequence[str]) -> None:
        """Mark delivered (or skipped) users confirmed in the claiming store, in one go."""
        ledger = self.ledger
        if hasattr(ledger, "confirm_many"):  # SQLite (one executemany), Redis (one pipeline)
            ledger.confirm_many(user_ids)
        elif not isinstance(ledger, SessionStore):  # no request context on this thread
            for user_id in user_ids:
                ledger.confirm(user_id)

    def before_send(self, rows: t.Sequence[OutboxRow]) -> dict[int, str]:
        if self.remote is None:
            return {}
        skip: dict[int, str] = {}
        for row in rows:
            try:
                facts = self.remote.user_facts(row.user_id)
            except RemoteError as exc:
                if exc.retryable:
                    raise
                # A user deleted since the signup still signed up: send the event.
                logger.warning(
                    "cannot check app_metadata before sending (%s); sending",
                    printable(str(exc), limit=300),
                )
                continue
            since = self.settings.since
            if facts.marked:
                skip[row.id] = "already marked in Auth0 app_metadata"
            elif since is not None and facts.created_at is not None and facts.created_at < since:
                self.remote.confirm(row.user_id)
                skip[row.id] = "user created before KEEN_SIGNUP_SINCE: marked, not reported"
        if skip:
            self._confirm_locally([row.user_id for row in rows if row.id in skip])
        return skip

    def after_delivered(self, rows: t.Sequence[OutboxRow]) -> None:
        self._confirm_locally([row.user_id for row in rows])
        if self.remote is None:
            return
        for row in rows:
            try:
                self.remote.confirm(row.user_id)
            except RemoteError as exc:
                if exc.retryable:
                    raise
                logger.warning(
                    "delivered, but app_metadata could not be set: %s",
                    printable(str(exc), limit=300),
                )
