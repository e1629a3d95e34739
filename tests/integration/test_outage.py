"""A long Keen outage, hours of it in seconds: a fake clock for the sender's modules, a
real SQLite outbox and the Keen emulator over real HTTP (down, then back).

Issue 16: a transient failure must never become a dead letter by speed. Attempts are
paced by the backoff and the circuit whoever asks (the sender's rounds, flushes), and a
retryable failure is dead-lettered only ``KEEN_SIGNUP_RETRY_FOR`` after its first failure.
"""

from __future__ import annotations

import random
import typing as t

import pytest
from _clock import FakeClock

from flask_keen_signup.database import Database
from flask_keen_signup.delivery import QueuedEvent
from flask_keen_signup.delivery.sender import Sender
from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox
from flask_keen_signup.keen import KeenClient
from flask_keen_signup.testing.keen import KeenEmulator

HOUR = 3600.0
COLLECTION = "signups"


@pytest.fixture
def emulator() -> t.Iterator[KeenEmulator]:
    with KeenEmulator() as emu:
        yield emu


@pytest.fixture
def outbox(tmp_path: t.Any) -> t.Iterator[SQLiteOutbox]:
    box = SQLiteOutbox(Database(str(tmp_path / "keen_signup.sqlite3")))
    yield box
    box.close()


def make_sender(outbox: SQLiteOutbox, emulator: KeenEmulator, **options: t.Any) -> Sender:
    """The documented defaults (backoff 1 s..5 min, circuit 3 failures, 5 s..60 s)."""
    client = KeenClient(
        emulator.project_id, emulator.write_key, api_url=emulator.url, timeout=(2.0, 5.0)
    )
    return Sender(outbox, client, handle_signals=False, rng=random.Random(16), **options)


def enqueue(outbox: SQLiteOutbox, clock: FakeClock, count: int) -> list[str]:
    users = []
    for n in range(count):
        user = f"auth0|outage{n}"
        body = {"userId": user, "keen": {"uniqueness_token": f"token-{n}"}}
        outbox.enqueue(QueuedEvent(COLLECTION, user, f"token-{n}", body), now=clock.now)
        users.append(user)
    return users


def run(sender: Sender, clock: FakeClock, seconds: float, *, flush_every: float = 0) -> None:
    """The worker's loop on the fake clock: a round, then its wait (as the thread would),
    with a flush asked for every ``flush_every`` seconds (an operator, a shutdown)."""
    end = clock.now + seconds
    next_flush = clock.now
    while clock.now < end:
        wait = sender.step()
        if flush_every and clock.now >= next_flush:
            sender.flush(30.0)
            next_flush = clock.now + flush_every
        clock.advance(max(wait, sender.tuning.flush_interval))


def test_a_three_hour_outage_dead_letters_nothing_and_attempts_are_paced(
    monkeypatch: pytest.MonkeyPatch, emulator: KeenEmulator, outbox: SQLiteOutbox
) -> None:
    clock = FakeClock().install(monkeypatch)
    users = enqueue(outbox, clock, 5)
    sender = make_sender(outbox, emulator)
    try:
        emulator.set_down(True)
        # Keen's own status page records a 172-minute ingestion incident: 3 hours here,
        # with a flush asked for every simulated minute on top of the sender's rounds.
        run(sender, clock, 3 * HOUR, flush_every=60.0)
        stats = outbox.stats()
        assert (stats.dead, stats.pending) == (0, 5)
        tries = len(emulator.request_log)
        # The circuit's cool-down is at least 30 s once it reached its 60 s cap: about one
        # try per 30-60 s, flushes included, never one per round or per flush.
        assert 3 * HOUR / 60 <= tries <= 3 * HOUR / 30 + 10, tries
        with outbox.database.reading() as conn:
            attempts = [r[0] for r in conn.execute("SELECT attempts FROM keen_signup_outbox")]
        assert max(attempts) > sender.tuning.max_attempts  # attempts alone killed nothing
        emulator.set_down(False)
        run(sender, clock, 10 * 60.0)
        assert outbox.pending_count() == 0
        assert outbox.stats().dead == 0
        delivered = sorted(e["userId"] for e in emulator.events(COLLECTION))
        assert delivered == sorted(users)
    finally:
        sender.client.close()


def test_dead_lettered_only_once_retry_for_has_elapsed(
    monkeypatch: pytest.MonkeyPatch, emulator: KeenEmulator, outbox: SQLiteOutbox
) -> None:
    clock = FakeClock().install(monkeypatch)
    enqueue(outbox, clock, 2)
    sender = make_sender(outbox, emulator, retry_for=3 * 24 * HOUR)  # the default
    try:
        emulator.set_down(True)
        sender.step()  # the first failure: the clock of RETRY_FOR starts here
        first_failure = clock.now
        clock.advance(3 * 24 * HOUR - 10 * 60)  # ten minutes short of 3 days
        sender.flush(30.0)
        assert outbox.stats().dead == 0
        assert outbox.pending_count() == 2
        clock.advance(20 * 60)
        sender.flush(30.0)
        while outbox.pending_count() and clock.now < first_failure + 4 * 24 * HOUR:
            clock.advance(max(sender.step(), 1.0))
        dead = outbox.dead_letters()
        assert len(dead) == 2
        assert all(d.reason.startswith("gave up after failing for 72.") for d in dead)
        assert all(d.died_at - first_failure >= 3 * 24 * HOUR for d in dead)
    finally:
        sender.client.close()
