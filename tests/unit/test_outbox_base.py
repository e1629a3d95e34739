"""The Outbox base class: what its public methods hand to a backend's storage primitives.

The contract tests (tests/integration/test_outbox.py) run every backend; these pin the
layer above them: normalised arguments, empty batches that reach no store, lease times
and cut-offs, orphans, stats assembly, and the defaults a backend may leave alone.
"""

from __future__ import annotations

import time
import typing as t

import pytest

from flask_keen_signup.delivery import DELIVERED
from flask_keen_signup.delivery import SKIPPED
from flask_keen_signup.delivery import ErasedRows
from flask_keen_signup.delivery import Outbox
from flask_keen_signup.delivery import OutboxRow
from flask_keen_signup.delivery import OutboxStats
from flask_keen_signup.delivery import QueuedEvent


class Recorder(Outbox):
    """Storage primitives that record what they were given (the store of a test)."""

    def __init__(self) -> None:
        self.calls: list[tuple[t.Any, ...]] = []

    def enqueue(self, event: QueuedEvent, *, now: float | None = None) -> int:
        raise AssertionError("not used here")

    def pending_count(self) -> int:
        return 0

    def _lease_due(self, *args: t.Any) -> list[OutboxRow]:
        self.calls.append(("lease_due", *args))
        return [row(3), row(1), row(2)]

    def _set_done(self, *args: t.Any) -> None:
        self.calls.append(("set_done", *args))

    def _set_confirming(self, *args: t.Any) -> None:
        self.calls.append(("set_confirming", *args))

    def _set_retry(self, *args: t.Any) -> None:
        self.calls.append(("set_retry", *args))

    def _to_dead(self, *args: t.Any) -> None:
        self.calls.append(("to_dead", *args))

    def _unlease(self, *args: t.Any) -> None:
        self.calls.append(("unlease", *args))

    def _lease_owners(self) -> list[str]:
        return ["dead/1/a", "live/2/b", "dead/3/c"]

    def _expire_owners(self, owners: list[str]) -> int:
        self.calls.append(("expire_owners", owners))
        return len(owners)

    def _replay_dead(self, *args: t.Any) -> int:
        self.calls.append(("replay_dead", *args))
        return 7

    def _delete_done(self, cutoff: float) -> int:
        self.calls.append(("delete_done", cutoff))
        return 2

    def _counts(self, now: float) -> tuple[t.Any, ...]:
        return (4, 3, 1, now + 5.0, 2, None, 6, None, "boom")


def row(row_id: int) -> OutboxRow:
    return OutboxRow(row_id, "c", "u", "t", "{}", 1, 0.0, 0.0, None)


NOW = 1000.0

#: (call on the outbox, what the primitives were given).
CASES: list[tuple[t.Callable[[Outbox], object], list[tuple[t.Any, ...]]]] = [
    (lambda o: o.claim_due(0, now=NOW, lease_seconds=30, owner="me"), []),
    (
        lambda o: o.claim_due(5, now=NOW, lease_seconds=30, owner="me", flush_since=9.0),
        [("lease_due", 5, NOW, NOW + 30, "me", 9.0)],
    ),
    (lambda o: o.mark_delivered([], now=NOW), []),
    (lambda o: o.mark_delivered({2, 1}, now=NOW), [("set_done", DELIVERED, [1, 2], None, NOW)]),
    (lambda o: o.mark_skipped({}, now=NOW), []),
    (
        lambda o: o.mark_skipped({4: "old"}, now=NOW),
        [("set_done", SKIPPED, [4], ["old"], NOW)],
    ),
    (lambda o: o.mark_confirming([], next_attempt_at=5.0, error="e"), []),
    (
        lambda o: o.mark_confirming([3], next_attempt_at=5.0, error="e"),
        [("set_confirming", [3], 5.0, "e")],
    ),
    (
        lambda o: o.mark_retry(3, next_attempt_at=5, error="e", now=NOW),
        [("set_retry", [(3, 5.0, "e")], NOW)],
    ),
    (lambda o: o.mark_retry_many([], now=NOW), []),
    (
        lambda o: o.mark_dead(3, reason="r", error_code=None, now=NOW),
        [("to_dead", [(3, "r", None)], NOW)],
    ),
    (lambda o: o.mark_dead_many([], now=NOW), []),
    (lambda o: o.release([], now=NOW), []),
    (lambda o: o.release([8], now=NOW), [("unlease", [8], NOW)]),
    (
        lambda o: o.expire_leases(lambda owner: owner.startswith("dead/")),
        [("expire_owners", ["dead/1/a", "dead/3/c"])],
    ),
    (lambda o: o.expire_leases(lambda owner: False), []),
    (lambda o: o.retry_dead([], now=NOW), []),
    (lambda o: o.retry_dead(None, now=NOW), [("replay_dead", None, NOW)]),
    (lambda o: o.retry_dead((5, 4), now=NOW), [("replay_dead", [5, 4], NOW)]),
    (lambda o: o.prune_delivered(60, now=NOW), [("delete_done", NOW - 60)]),
    # A backend that cannot drop bodies alone deletes those rows (stricter).
    (lambda o: o.drop_delivered_bodies(60, now=NOW), [("delete_done", NOW - 60)]),
]


@pytest.mark.parametrize(("call", "expected"), CASES)
def test_what_the_primitives_are_given(
    call: t.Callable[[Outbox], object], expected: list[tuple[t.Any, ...]]
) -> None:
    box = Recorder()
    call(box)
    assert box.calls == expected


def test_claimed_rows_come_back_in_id_order() -> None:
    rows = Recorder().claim_due(3, now=NOW, lease_seconds=1, owner="me")
    assert [r.id for r in rows] == [1, 2, 3]


def test_without_now_the_clock_is_read() -> None:
    box = Recorder()
    before = time.time()
    box.release([1])
    (_, _, now) = box.calls[0]
    assert before <= now <= time.time()


def test_stats_are_assembled_from_the_counts() -> None:
    # A created_at in the future (clocks of two hosts) is no negative age.
    assert Recorder().stats(NOW) == OutboxStats(
        pending=4,
        due=3,
        in_flight=1,
        delivered=0,
        skipped=6,
        dead=2,
        oldest_pending_age=0.0,
        last_error="boom",
        resends=0,
    )


def test_defaults_for_a_backend_without_leases_or_erasure() -> None:
    box = Recorder()
    assert box.dead_letters(0) == []
    assert box.renew_leases([1], owner="me", now=NOW, lease_seconds=5) == 0
    assert box.renew_leases([], owner="me", now=NOW, lease_seconds=5) == 0
    with pytest.raises(NotImplementedError, match="Recorder cannot forget a user"):
        box.forget_user("c", "u", erased_id="h", now=NOW)
    assert ErasedRows(1, 2, 3).total == 6
