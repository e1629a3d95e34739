"""What Keen's answers mean for each row (:mod:`flask_keen_signup.delivery.outcomes`).

Driven directly, without the sender's thread or HTTP: rows are claimed from the
in-memory outbox, an outcome is applied, and the outbox's own public reads (claims at a
chosen time, stats, dead letters) show what was recorded. The same rules over real HTTP
are in ``test_sender.py``.
"""

from __future__ import annotations

import dataclasses
import random
import time
import typing as t

import pytest
from _clock import FakeClock

from flask_keen_signup.delivery import DeliveryHooks
from flask_keen_signup.delivery import OutboxRow
from flask_keen_signup.delivery import QueuedEvent
from flask_keen_signup.delivery._backoff import Backoff
from flask_keen_signup.delivery._circuit import CLOSED
from flask_keen_signup.delivery._circuit import OPEN
from flask_keen_signup.delivery._circuit import CircuitBreaker
from flask_keen_signup.delivery.memory import MemoryOutbox
from flask_keen_signup.delivery.outcomes import NO_RESULT
from flask_keen_signup.delivery.outcomes import Outcomes
from flask_keen_signup.delivery.outcomes import RequestFailed
from flask_keen_signup.delivery.outcomes import StoreEpisode
from flask_keen_signup.delivery.outcomes import read_results
from flask_keen_signup.exceptions import Auth0APIError
from flask_keen_signup.exceptions import KeenAPIError
from flask_keen_signup.exceptions import KeenConnectionError
from flask_keen_signup.exceptions import StoreError
from flask_keen_signup.keen import EventResult
from flask_keen_signup.keen import Outcome

OWNER = "test-host/1/abc"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, t.Any]]] = []

    def __call__(self, kind: str, payload: dict[str, t.Any]) -> None:
        self.calls.append((kind, payload))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]


def enqueue(box: MemoryOutbox, count: int) -> None:
    for n in range(count):
        uid = f"auth0|u{n}"
        box.enqueue(QueuedEvent("signups", uid, f"tok{n}", {"userId": uid}))


def claim(box: MemoryOutbox, count: int = 100, *, now: float | None = None) -> list[OutboxRow]:
    now = time.time() if now is None else now
    return box.claim_due(count, now=now, lease_seconds=60.0, owner=OWNER)


def outcomes(
    box: MemoryOutbox,
    *,
    max_attempts: int = 5,
    hooks: DeliveryHooks | None = None,
    notify: t.Any = None,
    threshold: int = 2,
) -> Outcomes:
    rng = random.Random(7)
    return Outcomes(
        box,
        max_attempts=max_attempts,
        backoff=Backoff(1.0, 8.0, rng),
        circuit=CircuitBreaker(threshold=threshold, cooldown=5.0, cap=60.0, rng=rng),
        hooks=hooks,
        notify=notify,
    )


# ---------------------------------------------------------------- reading an answer


def test_read_results_pairs_rows_with_their_own_result() -> None:
    box = MemoryOutbox()
    enqueue(box, 4)
    rows = claim(box)
    results = [
        EventResult(Outcome.DELIVERED),
        EventResult(Outcome.PERMANENT, "InvalidPropertyNameError", "bad name"),
        EventResult(Outcome.RETRYABLE, None, "timeout"),
        EventResult(Outcome.DELIVERED),
    ]
    verdicts = read_results(rows, results)
    assert [r.id for r in verdicts.delivered] == [rows[0].id, rows[3].id]
    name = "InvalidPropertyNameError"
    assert verdicts.dead == [(rows[1], f"{name}: bad name", name)]
    assert verdicts.retry == [(rows[2], "timeout")]
    # A short answer pairs nothing (by position only): every row again, none guessed.
    short = read_results(rows, results[:3])
    assert (short.delivered, short.dead) == ([], [])
    assert short.retry == [(row, NO_RESULT) for row in rows]


# ---------------------------------------------------------------- per-row outcomes


def test_retry_never_sooner_than_retry_after_and_dead_only_after_retry_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attempts alone never dead-letter a retryable failure (issue 16): only time does,
    ``retry_for`` seconds after the row's first failure."""
    box = MemoryOutbox()
    enqueue(box, 1)
    clock = FakeClock().install(monkeypatch, ["flask_keen_signup.delivery.outcomes"])
    notes = Recorder()
    record = outcomes(box, max_attempts=2, notify=notes)
    record.retry_for = 3600.0
    first = claim(box, now=clock.now)  # attempt 1
    record.retry([(first[0], "503", KeenConnectionError("down"))], retry_after=30.0)
    assert claim(box, now=clock.now + 29.0) == []  # the backoff ceiling is 1 s: Retry-After wins
    clock.advance(31.0)
    again = claim(box, now=clock.now)
    assert [(r.id, r.attempts) for r in again] == [(first[0].id, 2)]
    assert again[0].first_failed_at == clock.now - 31.0  # counted from the first failure
    for _ in range(50):  # far past max_attempts, well inside retry_for: still queued
        record.retry_all(again, "503 again", None)
        clock.advance(60.0)
        again = claim(box, now=clock.now + 10.0)
    assert box.dead_letters() == []
    assert [r.attempts for r in again] == [52]
    clock.advance(3600.0)  # the first failure is now more than retry_for ago
    record.retry_all(again, "503 again", None)
    dead = box.dead_letters()
    assert [(d.id, d.error_code) for d in dead] == [(first[0].id, None)]
    assert dead[0].reason == "gave up after failing for 1.8 h (52 attempts): 503 again"
    assert box.stats().pending == 0
    assert notes.kinds() == ["failed"] * 51 + ["dead"]


def test_apply_records_dead_retry_and_delivered_and_notifies_each() -> None:
    box = MemoryOutbox()
    enqueue(box, 3)
    notes = Recorder()
    record = outcomes(box, notify=notes)
    rows = claim(box)
    verdicts = read_results(
        rows,
        [
            EventResult(Outcome.DELIVERED),
            EventResult(Outcome.RETRYABLE, "InternalServerError", None),
            EventResult(Outcome.PERMANENT, "InvalidCollectionNameError", "no"),
        ],
    )
    record.apply(verdicts)
    stats = box.stats()
    assert (stats.delivered, stats.pending, stats.dead) == (1, 1, 1)
    assert box.dead_letters()[0].error_code == "InvalidCollectionNameError"
    assert sorted(notes.kinds()) == ["dead", "delivered", "failed"]
    delivered = dict(notes.calls)["delivered"]
    assert delivered["user_id"] == rows[0].user_id and delivered["attempts"] == 1


def test_a_broken_subscriber_does_not_break_the_outcome(caplog: pytest.LogCaptureFixture) -> None:
    box = MemoryOutbox()
    enqueue(box, 1)

    def broken(kind: str, payload: dict[str, t.Any]) -> None:
        raise RuntimeError("subscriber bug")

    outcomes(box, notify=broken).delivered(claim(box))
    assert box.stats().delivered == 1
    assert "notify('delivered') raised" in caplog.text


# ---------------------------------------------------------------- whole requests, circuit


def test_whole_request_failures_open_the_circuit_and_success_closes_it() -> None:
    box = MemoryOutbox()
    enqueue(box, 2)
    record = outcomes(box, threshold=2)
    rows = claim(box)
    with pytest.raises(RequestFailed):
        record.request_failed(rows, KeenConnectionError("connection refused"))
    assert record.circuit.state() == CLOSED  # one failure: below the threshold
    rows = claim(box, now=time.time() + 1000)
    busy = KeenAPIError(429, "TooManyRequests", "slow down", retryable=True, retry_after=40.0)
    with pytest.raises(RequestFailed):
        record.request_failed(rows, busy)
    assert record.circuit.state() == OPEN
    assert record.circuit.remaining() >= 39.0  # Retry-After beats the jittered cool-down
    assert record.last_error is not None and "429" in record.last_error
    assert box.stats().pending == 2  # nothing lost while Keen is down
    assert record.catch_up_since is None
    record.request_succeeded()
    assert record.circuit.state() == CLOSED
    assert record.catch_up_since is not None  # backed-off rows may go at once


# ---------------------------------------------------------------- the store's hooks


class Hooks(DeliveryHooks):
    def __init__(
        self, *, skip: t.Collection[str] = (), fail_after: Exception | None = None
    ) -> None:
        self.skip = set(skip)
        self.fail_after = fail_after
        self.confirmed: list[str] = []

    def before_send(self, rows: t.Sequence[OutboxRow]) -> dict[int, str]:
        return {row.id: "known" for row in rows if row.user_id in self.skip}

    def after_delivered(self, rows: t.Sequence[OutboxRow]) -> None:
        if self.fail_after is not None:
            raise self.fail_after
        self.confirmed.extend(row.user_id for row in rows)


def test_before_send_skips_rows_the_store_already_knows() -> None:
    box = MemoryOutbox()
    enqueue(box, 3)
    record = outcomes(box, hooks=Hooks(skip={"auth0|u1"}))
    rows = claim(box)
    left = record.before_send(rows)
    assert [r.user_id for r in left] == ["auth0|u0", "auth0|u2"]
    assert box.stats().skipped == 1


def test_before_send_may_revise_the_rows_it_lets_through() -> None:
    """A hook replaces a row in the sender's list (e.g. keen.timestamp from a lookup): the
    revised copy is what goes on; the skipped rows are gone either way."""

    class Revising(Hooks):
        def before_send(self, rows: t.Sequence[OutboxRow]) -> dict[int, str]:
            assert isinstance(rows, list)
            rows[-1] = dataclasses.replace(rows[-1], body_json='{"revised": true}')
            return super().before_send(rows)

    box = MemoryOutbox()
    enqueue(box, 3)
    rows = claim(box)
    left = outcomes(box, hooks=Revising(skip={"auth0|u0"})).before_send(rows)
    assert [r.user_id for r in left] == ["auth0|u1", "auth0|u2"]
    assert left[-1].body == {"revised": True} and left[-1].id == rows[-1].id
    assert rows[-1].body != {"revised": True}, "the caller's list is not changed"


def test_no_before_send_hook_passes_rows_through_untouched() -> None:
    box = MemoryOutbox()
    enqueue(box, 2)
    rows = claim(box)
    assert outcomes(box).before_send(rows) is rows


def test_after_delivered_failing_keeps_rows_confirming_not_resent() -> None:
    box = MemoryOutbox()
    enqueue(box, 2)
    retryable = Auth0APIError(503, "unavailable", "later", retryable=True, retry_after=20.0)
    record = outcomes(box, hooks=Hooks(fail_after=retryable))
    now = time.time()
    record.delivered(claim(box, now=now))
    assert box.stats().delivered == 0 and box.stats().pending == 2
    assert claim(box, now=now + 19.0) == []  # Retry-After honoured
    later = claim(box, now=now + 21.0)
    assert {r.state for r in later} == {"confirming"}


def test_after_delivered_failing_permanently_gives_up_confirming_but_counts_delivered() -> None:
    box = MemoryOutbox()
    enqueue(box, 2)
    permanent = Auth0APIError(403, "forbidden", "no scope", retryable=False)
    outcomes(box, hooks=Hooks(fail_after=permanent)).delivered(claim(box))
    assert box.stats().delivered == 2 and box.stats().pending == 0


# ---------------------------------------------------------------- the outbox itself failing


def test_store_episode_logs_once_and_ends_when_the_outbox_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    episode = StoreEpisode("sender")
    with caplog.at_level("DEBUG", logger="flask_keen_signup"):
        episode.failing(StoreError("disk I/O error"), 0.5)
        episode.failing(StoreError("disk I/O error"), 0.5)
        episode.check(MemoryOutbox())
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "disk I/O error" in errors[0].getMessage()
    assert any("works again" in r.getMessage() for r in caplog.records)
    assert episode.error is None
