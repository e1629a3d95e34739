"""Sending one leased batch to Keen, request by request: the sender's transport.

As in sentry-python, where the transport encodes and posts while the worker only runs
jobs: this module takes rows already leased, plans the requests (:mod:`.batching`), posts
them with the :class:`~flask_keen_signup.keen.KeenClient`, and hands each answer to
:class:`~.outcomes.Outcomes`. It starts no thread of its own except the lease keeper
that renews the rows' leases while they are on the wire.

A 413 splits a request in halves (a lone oversize event is dead). A whole-batch 400
does the same, to isolate the poison event. Any other failure of a whole request backs
off all its rows and the rest of the batch, and ends the round (:class:`RequestFailed`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import types
import typing as t

from ..exceptions import KeenAPIError
from ..exceptions import KeenError
from ..exceptions import KeenRequestTooLargeError
from ..keen import KeenClient
from . import CONFIRMING
from . import OutboxRow
from .batching import Item
from .batching import encode_rows
from .batching import halves
from .batching import plan_requests
from .batching import request_body
from .batching import too_big_reason
from .leases import Leases
from .outcomes import Outcomes
from .outcomes import RequestFailed
from .outcomes import read_results
from .tuning import Tuning

logger = logging.getLogger(__name__)

_EMPTY: t.Mapping[str, t.Any] = types.MappingProxyType({})


@dataclasses.dataclass(eq=False)
class Transport:
    """Posts leased rows to Keen and records every row's outcome.

    :param client: the Keen write client.
    :param outcomes: records the answers.
    :param leases: the rows' leases (renewed while sending, let go after).
    :param tuning: the sender's numbers: ``batch_size`` events and ``max_batch_bytes``
        bytes of body per request at most.
    :param name: the sender's name, for log lines.
    """

    client: KeenClient
    outcomes: Outcomes
    leases: Leases
    tuning: Tuning
    name: str

    def deliver(
        self,
        rows: list[OutboxRow],
        *,
        deadline: float | None = None,
        stopping: t.Callable[[], bool] = lambda: False,
    ) -> None:
        """Send ``rows`` (already leased) and record each one's outcome.

        Requests not started by ``deadline`` (monotonic), or once ``stopping()`` turns
        true, are not sent: their rows are released for the next round or process.

        :raises RequestFailed: a whole request failed; the rest of the batch backed off.
        """
        try:
            with self.leases.renewing():
                self._deliver(rows, deadline=deadline, stopping=stopping)
        finally:
            self.leases.let_go(rows)

    def _deliver(
        self, rows: list[OutboxRow], *, deadline: float | None, stopping: t.Callable[[], bool]
    ) -> None:
        outcomes = self.outcomes
        confirming = [r for r in rows if r.state == CONFIRMING]
        if confirming:
            outcomes.confirm(confirming)
        sendable = outcomes.before_send([r for r in rows if r.state != CONFIRMING])
        if not sendable:
            return
        encoded, too_big = encode_rows(sendable)
        if too_big:
            outcomes.dead([(row, too_big_reason(size), "EventTooLarge") for row, size in too_big])
        tuning = self.tuning
        chunks = plan_requests(
            encoded, max_bytes=tuning.max_batch_bytes, max_events=tuning.batch_size
        )
        for index, chunk in enumerate(chunks):
            late = deadline is not None and time.monotonic() >= deadline
            if late or stopping():
                self.leases.release([row for later in chunks[index:] for row, _ in later])
                return
            try:
                self.send(chunk)
            except RequestFailed:
                rest = [row for later in chunks[index + 1 :] for row, _ in later]
                outcomes.retry_all(rest, "not sent: an earlier request of the batch failed", None)
                raise

    def _split(self, chunk: list[Item], reason: str, code: str | None) -> None:
        """Keen refused ``chunk`` as a whole: one event is dead, more are sent in halves."""
        if len(chunk) == 1:
            self.outcomes.dead([(chunk[0][0], reason, code)])
            return
        logger.debug("%s: %s for %d events; splitting", self.name, code, len(chunk))
        for half in halves(chunk):
            self.send(half)

    def send(self, chunk: list[Item]) -> None:
        """One request for one collection's chunk; splits it on 413 and on a whole-batch 400.

        :raises RequestFailed: the request failed as a whole (its rows backed off).
        """
        outcomes = self.outcomes
        rows = [row for row, _ in chunk]
        collection, body = request_body(chunk)
        try:
            result = self.client.add_events({collection: [_EMPTY] * len(chunk)}, body=body)
        except KeenRequestTooLargeError as exc:
            self._split(chunk, f"Keen refused the event as too large: {exc}", "413")
            return
        except KeenAPIError as exc:
            if exc.status_code == 400 and not exc.retryable:
                # Keen refused the request as a whole: isolate the poison event(s).
                self._split(chunk, str(exc), exc.error_code)
                return
            # 5xx, 429; or 401/402/403/404...: the project, key or account, not the events.
            # Nothing gets through until someone fixes it; keep the events and back off.
            outcomes.request_failed(rows, exc)
        except KeenError as exc:  # connection refused/reset, timeouts
            outcomes.request_failed(rows, exc)
        except Exception as exc:  # noqa: BLE001 - e.g. a key that cannot be a header value
            # Not Keen's answer: the request could not even be made. Retried like an
            # outage (backoff, circuit), so it shows in status and health instead of
            # leaving the rows leased by a round that died. Only the type is kept: the
            # text of such an error may quote the header value (the key).
            logger.debug("%s: could not send a request: %s", self.name, type(exc).__name__)
            failure = KeenError(
                f"could not send the request to Keen: {type(exc).__name__}", retryable=True
            )
            outcomes.request_failed(rows, failure)
        outcomes.request_succeeded()
        verdicts = read_results(rows, result.results.get(collection, []))
        outcomes.apply(verdicts)
        logger.debug(
            "%s: batch of %d: %d delivered, %d retry, %d dead",
            self.name,
            len(rows),
            len(verdicts.delivered),
            len(verdicts.retry),
            len(verdicts.dead),
        )
