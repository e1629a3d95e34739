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
        with self._lock:
            row_id = self._next_id
            self._next_id += 1
            self._rows[row_id] = _Row(
                row_id,
                event.collection,
                event.user_id,
                event.uniqueness_token,
                event.body_json,
                now,
                now,
            )
        return row_id

    def _open(self, ids: t.Iterable[int]) -> t.Iterator[_Row]:
        """The rows of ``ids`` still to send or confirm (call with the lock held)."""
        for row_id in dict.fromkeys(ids):  # each row once
            row = self._rows.get(row_id)
            if row is not None and row.state in OPEN_STATES:
                yield row

    def _lease_due(
        self, limit: int, now: float, until: float, owner: str, flush_since: float | None
    ) -> list[OutboxRow]:
        def due(row: _Row) -> bool:
            if row.next_attempt_at <= now:
                return True
            return flush_since is not None and row.lease_owner is None and (
                row.last_attempt_at is None or row.last_attempt_at < flush_since
            )

        with self._lock:
            candidates = [r for r in self._rows.values() if r.state in OPEN_STATES and due(r)]
            candidates.sort(key=lambda r: (r.next_attempt_at, r.id))
            claimed = []
            for row in candidates[:limit]:
                if row.lease_owner is not None and row.state == PENDING:
                    self._resends += 1
                row.attempts += 1
                row.lease_owner = owner
                row.next_attempt_at = until
                row.last_attempt_at = now
                claimed.append(row.snapshot())
        return claimed

    def _set_done(self, state: str, ids: list[int], reasons: list[str] | None, now: float) -> None:
        notes = dict(zip(ids, reasons, strict=True)) if reasons is not None else {}
        with self._lock:
            for row in list(self._open(ids)):
                if row.id in notes:
                    row.last_error = f"skipped: {notes[row.id]}"
                if state == DELIVERED:
                    self._delivered += 1
                else:
                    self._skipped += 1
                if not self.keep_delivered:
                    del self._rows[row.id]
                row.state, row.lease_owner, row.done_at = state, None, now

    def _set_confirming(self, ids: list[int], next_attempt_at: float, error: str) -> None:
        with self._lock:
            for row in self._open(ids):
                row.state, row.attempts, row.lease_owner = CONFIRMING, 0, None
                row.next_attempt_at, row.last_error = next_attempt_at, error
            self._last_error = error

    def _set_retry(self, items: list[tuple[int, float, str]], now: float) -> None:
        with self._lock:
            for row_id, next_attempt_at, error in items:
                for row in self._open([row_id]):
                    if row.first_failed_at is None:
                        row.first_failed_at = now
                    row.lease_owner = None
                    row.next_attempt_at, row.last_error = next_attempt_at, error
                    self._last_error = error

    def _to_dead(self, items: list[tuple[int, str, str | None]], now: float) -> None:
        with self._lock:
            for row_id, reason, error_code in items:
                for row in list(self._open([row_id])):
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

    def _unlease(self, ids: list[int], now: float) -> None:
        with self._lock:
            for row in self._open(ids):
                if row.lease_owner is not None:
                    row.lease_owner, row.next_attempt_at = None, now
                    row.attempts = max(0, row.attempts - 1)

    def _extend_leases(self, ids: list[int], owner: str, until: float) -> int:
        with self._lock:
            rows = [row for row in self._open(ids) if row.lease_owner == owner]
            for row in rows:
                row.next_attempt_at = until
        return len(rows)

    def _lease_owners(self) -> set[str]:
        with self._lock:
            return {r.lease_owner for r in self._open(list(self._rows)) if r.lease_owner}

    def _expire_owners(self, owners: list[str]) -> int:
        with self._lock:
            rows = [r for r in self._open(list(self._rows)) if r.lease_owner in owners]
            for row in rows:
                row.next_attempt_at = min(row.next_attempt_at, 0.0)
        return len(rows)

    def pending_count(self) -> int:
        with self._lock:
            return sum(1 for row in self._rows.values() if row.state in OPEN_STATES)

    def _counts(self, now: float) -> tuple[t.Any, ...]:
        with self._lock:
            rows = list(self._open(list(self._rows)))
            return (
                len(rows),
                sum(1 for row in rows if row.next_attempt_at <= now),
                sum(1 for row in rows if row.lease_owner and row.next_attempt_at > now),
                min((row.created_at for row in rows), default=None),
                len(self._dead),
                self._delivered,
                self._skipped,
                self._resends,
                self._last_error,
            )

    def _read_dead(self, limit: int) -> list[DeadLetter]:
        with self._lock:
            return sorted(self._dead.values(), key=lambda d: (d.died_at, d.id))[:limit]

    def _replay_dead(self, ids: list[int] | None, now: float) -> int:
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

    def _finished(self, cutoff: float) -> list[_Row]:
        """Delivered and skipped rows done before ``cutoff`` (call with the lock held)."""
        return [
            row
            for row in self._rows.values()
            if row.state in (DELIVERED, SKIPPED) and row.done_at is not None
            and row.done_at < cutoff
        ]

    def _delete_done(self, cutoff: float) -> int:
        with self._lock:
            doomed = self._finished(cutoff)
            for row in doomed:
                del self._rows[row.id]
            return len(doomed)

    def _empty_bodies(self, cutoff: float) -> int:
        with self._lock:
            rows = [row for row in self._finished(cutoff) if row.body_json]
            for row in rows:
                row.body_json = ""
            return len(rows)

    def _erase_user(self, collection: str, user_id: str, erased_id: str, now: float) -> ErasedRows:
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
