"""An in-memory :class:`~flask_keen_signup.delivery.Outbox`: for tests and fakes.

Same semantics as the SQLite outbox (leases, attempts, dead letters, counters), but
everything is lost at exit and it is shared only by the threads of one process.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import typing as t

from .base import CONFIRMING
from .base import DELIVERED
from .base import OPEN_STATES
from .base import PENDING
from .base import SKIPPED
from .base import DeadLetter
from .base import ErasedRows
from .base import Outbox
from .base import OutboxRow
from .base import OutboxStats
from .base import QueuedEvent


@dataclasses.dataclass
class _Row:
    id: int
    collection: str
    user_id: str
    uniqueness_token: str
    body_json: str
    created_at: float
    next_attempt_at: float
    state: str = PENDING
    attempts: int = 0
    lease_owner: str | None = None
    last_error: str | None = None
    last_attempt_at: float | None = None
    done_at: float | None = None
    first_failed_at: float | None = None

    def snapshot(self) -> OutboxRow:
        return OutboxRow(
            id=self.id,
            collection=self.collection,
            user_id=self.user_id,
            uniqueness_token=self.uniqueness_token,
            body_json=self.body_json,
            attempts=self.attempts,
            created_at=self.created_at,
            next_attempt_at=self.next_attempt_at,
            last_error=self.last_error,
            state=self.state,
            first_failed_at=self.first_failed_at,
        )


class MemoryOutbox(Outbox):
    """Rows in a dict guarded by a lock.

    :param keep_delivered: keep finished rows until :meth:`prune_delivered` (like the
        SQLite outbox) or forget them at once.
    """

    def __init__(self, *, keep_delivered: bool = True) -> None:
        self.keep_delivered = keep_delivered
        self._rows: dict[int, _Row] = {}
        self._dead: dict[int, DeadLetter] = {}
        self._next_id = 1
        self._lock = threading.Lock()
        self._delivered = 0
        self._skipped = 0
        self._resends = 0
        self._last_error: str | None = None

    def __repr__(self) -> str:
        return f"<MemoryOutbox rows={len(self._rows)} dead={len(self._dead)}>"

    def enqueue(self, event: QueuedEvent, *, now: float | None = None) -> int:
        now = time.time() if now is None else now
        body_json = event.body_json
        with self._lock:
            row_id = self._next_id
            self._next_id += 1
            self._rows[row_id] = _Row(
                row_id,
                event.collection,
                event.user_id,
                event.uniqueness_token,
                body_json,
                now,
                now,
            )
        return row_id

    def claim_due(
        self,
        limit: int,
        *,
        now: float,
        lease_seconds: float,
        owner: str,
        flush_since: float | None = None,
    ) -> list[OutboxRow]:
        with self._lock:
            candidates = []
            for row in self._rows.values():
                if row.state not in OPEN_STATES:
                    continue
                due = row.next_attempt_at <= now
                if not due and flush_since is not None:
                    due = row.lease_owner is None and (
                        row.last_attempt_at is None or row.last_attempt_at < flush_since
                    )
                if due:
                    candidates.append(row)
            candidates.sort(key=lambda r: (r.next_attempt_at, r.id))
            claimed = []
            for row in candidates[:limit]:
                if row.lease_owner is not None and row.state == PENDING:
                    self._resends += 1
                row.attempts += 1
                row.lease_owner = owner
                row.next_attempt_at = now + lease_seconds
                row.last_attempt_at = now
                claimed.append(row.snapshot())
        claimed.sort(key=lambda r: r.id)
        return claimed

    def _finish(self, row_id: int, state: str, now: float) -> None:
        row = self._rows.get(row_id)
        if row is None or row.state not in OPEN_STATES:
            return
        if state == DELIVERED:
            self._delivered += 1
        else:
            self._skipped += 1
        if not self.keep_delivered:
            del self._rows[row_id]
            return
        row.state = state
        row.lease_owner = None
        row.done_at = now

    def mark_delivered(self, ids: t.Collection[int], *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            for row_id in ids:
                self._finish(row_id, DELIVERED, now)

    def mark_skipped(self, reasons: t.Mapping[int, str], *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            for row_id, reason in reasons.items():
                row = self._rows.get(row_id)
                if row is not None:
                    row.last_error = f"skipped: {reason}"
                self._finish(row_id, SKIPPED, now)

    def mark_confirming(
        self, ids: t.Collection[int], *, next_attempt_at: float, error: str
    ) -> None:
        with self._lock:
            for row_id in ids:
                row = self._rows.get(row_id)
                if row is None or row.state not in OPEN_STATES:
                    continue
                row.state = CONFIRMING
                row.attempts = 0
                row.lease_owner = None
                row.next_attempt_at = next_attempt_at
                row.last_error = error
            self._last_error = error

    def mark_retry_many(
        self, items: t.Sequence[tuple[int, float, str]], *, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        with self._lock:
            for row_id, next_attempt_at, error in items:
                row = self._rows.get(row_id)
                if row is None or row.state not in OPEN_STATES:
                    continue
                if row.first_failed_at is None:
                    row.first_failed_at = now
                row.lease_owner = None
                row.next_attempt_at = next_attempt_at
                row.last_error = error
                self._last_error = error

    def mark_dead_many(
        self, items: t.Sequence[tuple[int, str, str | None]], *, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        with self._lock:
            for row_id, reason, error_code in items:
                row = self._rows.get(row_id)
                if row is None or row.state not in OPEN_STATES:
                    continue
                del self._rows[row_id]
                self._dead[row_id] = DeadLetter(
                    id=row.id,
                    collection=row.collection,
                    user_id=row.user_id,
                    uniqueness_token=row.uniqueness_token,
                    body_json=row.body_json,
                    attempts=row.attempts,
                    created_at=row.created_at,
                    reason=reason,
                    error_code=error_code,
                    died_at=now,
                )
                self._last_error = reason

    def release(self, ids: t.Collection[int], *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            for row_id in ids:
                row = self._rows.get(row_id)
                if row is None or row.state not in OPEN_STATES or row.lease_owner is None:
                    continue
                row.lease_owner = None
                row.next_attempt_at = now
                row.attempts = max(0, row.attempts - 1)

    def renew_leases(
        self, ids: t.Collection[int], *, owner: str, now: float, lease_seconds: float
    ) -> int:
        count = 0
        with self._lock:
            for row_id in ids:
                row = self._rows.get(row_id)
                if row is not None and row.state in OPEN_STATES and row.lease_owner == owner:
                    row.next_attempt_at = now + lease_seconds
                    count += 1
        return count

    def expire_leases(self, is_orphan: t.Callable[[str], bool]) -> int:
        count = 0
        with self._lock:
            for row in self._rows.values():
                if row.state in OPEN_STATES and row.lease_owner and is_orphan(row.lease_owner):
                    row.next_attempt_at = min(row.next_attempt_at, 0.0)
                    count += 1
        return count

    def pending_count(self) -> int:
        with self._lock:
            return sum(1 for row in self._rows.values() if row.state in OPEN_STATES)

    def stats(self, now: float | None = None) -> OutboxStats:
        now = time.time() if now is None else now
        with self._lock:
            open_rows = [row for row in self._rows.values() if row.state in OPEN_STATES]
            oldest = min((row.created_at for row in open_rows), default=None)
            return OutboxStats(
                pending=len(open_rows),
                due=sum(1 for row in open_rows if row.next_attempt_at <= now),
                in_flight=sum(
                    1 for row in open_rows if row.lease_owner and row.next_attempt_at > now
                ),
                delivered=self._delivered,
                skipped=self._skipped,
                dead=len(self._dead),
                oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
                last_error=self._last_error,
                resends=self._resends,
            )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            return sorted(self._dead.values(), key=lambda d: (d.died_at, d.id))[:limit]

    def retry_dead(self, ids: t.Collection[int] | None = None, *, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._lock:
            chosen = list(self._dead) if ids is None else [i for i in ids if i in self._dead]
            for row_id in chosen:
                dead = self._dead.pop(row_id)
                self._rows[row_id] = _Row(
                    dead.id,
                    dead.collection,
                    dead.user_id,
                    dead.uniqueness_token,
                    dead.body_json,
                    dead.created_at,
                    now,
                    last_error=dead.reason,
                )
            return len(chosen)

    def prune_delivered(self, older_than_seconds: float, *, now: float | None = None) -> int:
        now = time.time() if now is None else now
        cutoff = now - older_than_seconds
        with self._lock:
            doomed = [
                row.id
                for row in self._rows.values()
                if row.state in (DELIVERED, SKIPPED)
                and row.done_at is not None
                and row.done_at < cutoff
            ]
            for row_id in doomed:
                del self._rows[row_id]
            return len(doomed)

    def drop_delivered_bodies(
        self, older_than_seconds: float, *, now: float | None = None
    ) -> int:
        now = time.time() if now is None else now
        cutoff = now - older_than_seconds
        dropped = 0
        with self._lock:
            for row in self._rows.values():
                if (
                    row.state in (DELIVERED, SKIPPED)
                    and row.body_json
                    and row.done_at is not None
                    and row.done_at < cutoff
                ):
                    row.body_json = ""
                    dropped += 1
        return dropped

    def forget_user(
        self, collection: str, user_id: str, *, erased_id: str, now: float | None = None
    ) -> ErasedRows:
        now = time.time() if now is None else now
        skipped = erased = 0
        with self._lock:
            for row in self._rows.values():
                if row.collection != collection or row.user_id != user_id:
                    continue
                if row.state in OPEN_STATES:
                    row.state, row.done_at, row.lease_owner = SKIPPED, now, None
                    row.last_error = "skipped: erased on request"
                    self._skipped += 1
                    skipped += 1
                else:
                    erased += 1
                row.user_id, row.body_json = erased_id, ""
            doomed = [
                d.id
                for d in self._dead.values()
                if d.collection == collection and d.user_id == user_id
            ]
            for row_id in doomed:
                del self._dead[row_id]
            self._last_error = None  # it may quote the user's event
        return ErasedRows(skipped=skipped, erased=erased, dead_letters=len(doomed))
