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
    from .backends.parts import RemoteMarkers
    from .config import Settings

logger = logging.getLogger(__name__)

#: What is known of a queued candidate's user: (marked remotely, created at).
Facts = tuple[bool, "dt.datetime | None"]

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
        """Skip the users :func:`~.decision.decide` says are not signups (marked, never
        sent); give the others their creation time as ``keen.timestamp`` when it was
        looked up here (in ``rows``)."""
        remote = self.remote
        facts = _remote_facts(remote, rows) if remote is not None else self._created_at(rows)
        skip: dict[int, str] = {}
        for index, row in enumerate(rows):
            if row.id not in facts:
                continue
            marked, created_at = facts[row.id]
            verdict = decide(since=self.settings.since, created_at=created_at, known=marked)
            if verdict is Verdict.SIGNUP:
                if remote is None and created_at is not None:
                    rows[index] = _with_timestamp(row, created_at)
                continue
            if verdict is Verdict.MARKED_ONLY and remote is not None:
                remote.confirm(row.user_id)
            skip[row.id] = _SKIPPED[verdict]
        if skip:
            self.ledger.confirm_many([row.user_id for row in rows if row.id in skip])
            if remote is None:
                logger.info(
                    "%d user(s) created before KEEN_SIGNUP_SINCE marked, not reported", len(skip)
                )
        return skip

    def after_delivered(self, rows: t.Sequence[OutboxRow]) -> None:
        self.ledger.confirm_many([row.user_id for row in rows])
        if self.remote is None:
            return
        for row in rows:
            try:
                self.remote.confirm(row.user_id)
            except RemoteError as exc:
                message = "delivered, but app_metadata could not be set: %s"
                _unless_retryable(exc, logging.WARNING, message)

    def _created_at(self, rows: list[OutboxRow]) -> dict[int, Facts]:
        """The creation time of the batch's live signups, from one Management API search
        (``KEEN_SIGNUP_SINCE`` without a remote store). Backfilled rows are not checked:
        ``migrate`` decided them.

        A retryable Management API error (429 after the client's own waits, 5xx, network)
        propagates: the sender postpones the whole batch with a backoff, nothing is sent.
        """
        if self.management is None or self.settings.since is None:
            return {}
        live = [row for row in rows if row.body.get("backfilled") is not True]
        if not live:
            return {}
        try:
            created = self.management.created_at_of(sorted({row.user_id for row in live}))
        except RemoteError as exc:
            # A permanent error (bad credentials, missing scope) must not hold signups
            # forever: send them, and say so loudly.
            message = "cannot look up users' created_at for KEEN_SIGNUP_SINCE (%s); sending"
            _unless_retryable(exc, logging.ERROR, message + " the batch unchecked")
            return {}
        return {
            row.id: (False, moment)
            for row in live
            if (moment := created.get(row.user_id)) is not None
        }


def _remote_facts(remote: RemoteMarkers, rows: list[OutboxRow]) -> dict[int, Facts]:
    """The remote marker and creation time of each row's user, one GET each."""
    facts: dict[int, Facts] = {}
    for row in rows:
        try:
            facts[row.id] = remote.user_facts(row.user_id)
        except RemoteError as exc:
            # A user deleted since the signup still signed up: send the event.
            message = "cannot check app_metadata before sending (%s); sending"
            _unless_retryable(exc, logging.WARNING, message)
    return facts


def _unless_retryable(exc: RemoteError, level: int, message: str) -> None:
    """Raise ``exc`` if retryable (the sender retries the batch later); else log it."""
    if exc.retryable:
        raise exc
    logger.log(level, message, printable(str(exc), limit=300))


def _with_timestamp(row: OutboxRow, created_at: dt.datetime) -> OutboxRow:
    """``row`` with ``keen.timestamp`` = ``created_at`` (the same row when it has it)."""
    body = json.loads(row.body_json)
    keen = body.get("keen")
    timestamp = format_timestamp(created_at)
    if not isinstance(keen, dict) or keen.get("timestamp") == timestamp:
        return row
    keen["timestamp"] = timestamp
    return dataclasses.replace(row, body_json=dumps_body(body))
