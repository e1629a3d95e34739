"""What the sender does around a delivery, for the marker stores.

Runs on the sender thread, never in a login request. After Keen accepted a batch the
local ledger's markers become *confirmed* (they were *pending*: queued). With the
``auth0`` store, the user's ``app_metadata`` is checked before sending (already marked, or
created before ``KEEN_SIGNUP_SINCE``: skipped) and set after delivery; a failed PATCH is
retried durably by the sender without writing to Keen again.

``KEEN_SIGNUP_SINCE`` with any other store, when the ID token carried no creation time:
the candidate waited in the outbox, and here, before the batch is sent, the users'
creation times are looked up with one Management API search per batch
(``ManagementClient.created_at_of``, paced to the tenant's rate limit). Users created
before ``SINCE`` are marked and skipped, never sent; the others are sent with
``keen.timestamp`` = the ``created_at`` just fetched (DESIGN §3: the creation time when
known), not the callback time the event was built with. Backfilled events (``flask
keen-signup migrate``) are not checked: migrate already decided them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import typing as t

from ._text import printable
from .decision import Verdict
from .decision import decide
from .delivery import DeliveryHooks
from .delivery import OutboxRow
from .delivery.base import dumps_body
from .events import format_timestamp
from .exceptions import RemoteError
from .stores import MarkerStore

if t.TYPE_CHECKING:  # pragma: no cover
    from .auth0 import ManagementClient
    from .backends import RemoteMarkers
    from .config import Settings

logger = logging.getLogger(__name__)

#: Why a queued candidate is not sent (the sender logs it with the row).
_SKIPPED = {
    Verdict.RETURNING: "already marked in Auth0 app_metadata",
    Verdict.MARKED_ONLY: "user created before KEEN_SIGNUP_SINCE: marked, not reported",
}


class MarkerHooks(DeliveryHooks):
    """Keep the markers in step with deliveries. See the module doc."""

    def __init__(
        self,
        settings: Settings,
        *,
        ledger: MarkerStore,
        remote: RemoteMarkers | None = None,
        management: ManagementClient | None = None,
    ) -> None:
        """
        :param ledger: where delivered (or skipped) users are marked confirmed.
        :param remote: a remote marker checked before sending and set after delivery
            (the ``auth0`` backend's :attr:`~.backends.Parts.remote`).
        :param management: looks created_at up for ``KEEN_SIGNUP_SINCE`` when no remote
            marker does.
        """
        self.settings = settings
        self.ledger = ledger
        self.remote = remote
        # Resolves created_at for KEEN_SIGNUP_SINCE when the auth0 store does not.
        self.management = management if self.remote is None else None

    def before_send(self, rows: list[OutboxRow]) -> dict[int, str]:
        if self.remote is None:
            return self._skip_created_before_since(rows)
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
            verdict = decide(
                since=self.settings.since, created_at=facts.created_at, known=facts.marked
            )
            if verdict is Verdict.MARKED_ONLY:
                self.remote.confirm(row.user_id)
            if verdict is not Verdict.SIGNUP:
                skip[row.id] = _SKIPPED[verdict]
        if skip:
            self.ledger.confirm_many([row.user_id for row in rows if row.id in skip])
        return skip

    def after_delivered(self, rows: t.Sequence[OutboxRow]) -> None:
        self.ledger.confirm_many([row.user_id for row in rows])
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

    def _skip_created_before_since(self, rows: list[OutboxRow]) -> dict[int, str]:
        """Look up the creation time of the batch's live signups; skip the old users, and
        give the others their creation time as ``keen.timestamp`` (in ``rows``).

        A retryable Management API error (429 after the client's own waits, 5xx, network)
        propagates: the sender postpones the whole batch with a backoff, nothing is sent.
        """
        since = self.settings.since
        if self.management is None or since is None:
            return {}
        live = [row for row in rows if row.body.get("backfilled") is not True]
        if not live:
            return {}
        try:
            created = self.management.created_at_of(sorted({row.user_id for row in live}))
        except RemoteError as exc:
            if exc.retryable:
                raise
            # A permanent error (bad credentials, missing scope) must not hold signups
            # forever: send them, and say so loudly.
            logger.error(
                "cannot look up users' created_at for KEEN_SIGNUP_SINCE (%s); sending the "
                "batch unchecked",
                printable(str(exc), limit=300),
            )
            return {}
        skip: dict[int, str] = {}
        live_ids = {row.id for row in live}
        for index, row in enumerate(rows):
            moment = created.get(row.user_id) if row.id in live_ids else None
            if moment is None:
                continue
            if decide(since=since, created_at=moment) is Verdict.MARKED_ONLY:
                skip[row.id] = _SKIPPED[Verdict.MARKED_ONLY]
            else:
                rows[index] = _with_timestamp(row, moment)
        if skip:
            self.ledger.confirm_many([row.user_id for row in rows if row.id in skip])
            logger.info(
                "%d user(s) created before KEEN_SIGNUP_SINCE marked, not reported", len(skip)
            )
        return skip


def _with_timestamp(row: OutboxRow, created_at: dt.datetime) -> OutboxRow:
    """``row`` with ``keen.timestamp`` = ``created_at`` (the same row when it has it)."""
    body = json.loads(row.body_json)
    keen = body.get("keen")
    timestamp = format_timestamp(created_at)
    if not isinstance(keen, dict) or keen.get("timestamp") == timestamp:
        return row
    keen["timestamp"] = timestamp
    return dataclasses.replace(row, body_json=dumps_body(body))
