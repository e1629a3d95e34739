"""The local spool's file format and ownership rules (``flask_keen_signup.spool``).

Real files in a temporary directory; the deciding side is the real SQLite ledger and
outbox (``backends.parts.claim_then_enqueue``, the spool drain's fallback), or the
in-memory outbox where only the spool is tested.
"""

from __future__ import annotations

import fcntl
import functools
import os
import typing as t

import pytest

from flask_keen_signup.backends.parts import claim_then_enqueue
from flask_keen_signup.database import Database
from flask_keen_signup.delivery import MemoryOutbox
from flask_keen_signup.delivery import QueuedEvent
from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox
from flask_keen_signup.events import uniqueness_token
from flask_keen_signup.exceptions import StoreError
from flask_keen_signup.spool import Spool
from flask_keen_signup.stores.sqlite import SQLiteStore

CAUSE = StoreError("database is locked")


def event(user_id: str, **extra: t.Any) -> QueuedEvent:
    token = uniqueness_token("signups", user_id)
    body = {"userId": user_id, "keen": {"uniqueness_token": token}, **extra}
    return QueuedEvent("signups", user_id, token, body)


class Recorder:
    """A ``decide`` that wins every claim once per user and remembers what it saw."""

    def __init__(self) -> None:
        self.seen: list[QueuedEvent] = []
        self.fail = False

    def __call__(self, events: t.Sequence[QueuedEvent]) -> list[bool]:
        if self.fail:
            raise StoreError("still locked")
        won = []
        for e in events:
            won.append(all(s.user_id != e.user_id for s in self.seen))
            self.seen.append(e)
        return won


def files(directory: str) -> list[str]:
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def test_records_round_trip_with_their_bodies_and_the_file_goes_away(tmp_path: t.Any) -> None:
    directory = str(tmp_path / "spool")
    spool = Spool(directory, "signups")
    assert spool.drain(Recorder()) is None  # nothing yet: no directory, no work
    spool.append(event("auth0|a", name="Zoë\nnew line", ip="203.0.113.7"), CAUSE)
    spool.append(event("auth0|b"), CAUSE)
    spool.append(event("auth0|a"), CAUSE)  # the same user twice in one episode
    assert spool.depth() == 3
    (name,) = files(directory)
    assert os.stat(os.path.join(directory, name)).st_mode & 0o777 == 0o600
    assert os.stat(directory).st_mode & 0o777 == 0o700
    recorder = Recorder()
    report = spool.drain(recorder)
    assert report is not None
    assert (report.queued, report.dropped, report.ignored) == (2, 1, 0)
    assert recorder.seen[0].body["name"] == "Zoë\nnew line"
    original = event("auth0|a", name="Zoë\nnew line", ip="203.0.113.7")
    assert recorder.seen[0].body_json == original.body_json
    assert files(directory) == []
    assert spool.depth() == 0
    assert spool.degraded_since is None


def test_a_torn_last_record_and_a_garbage_line_are_skipped_not_fatal(
    tmp_path: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    directory = str(tmp_path / "spool")
    dead = Spool(directory, "signups")
    dead.append(event("auth0|a"), CAUSE)
    dead.append(event("auth0|b"), CAUSE)
    dead.close()  # its process is gone: the lock is free
    (path,) = files(directory)
    with open(os.path.join(directory, path), "ab") as f:
        f.write(b"not json at all\n")
        f.write(b'{"v":1,"c":"signups","u":"auth0|c","t":"x","b":{"userId":"au')
    recorder = Recorder()
    report = Spool(directory, "signups").drain(recorder)
    assert report is not None
    assert [e.user_id for e in recorder.seen] == ["auth0|a", "auth0|b"]
    assert (report.queued, report.ignored, report.taken_over) == (2, 2, 1)
    assert files(directory) == []
    assert "torn record" in caplog.text and "unreadable record" in caplog.text


def test_a_failed_decision_keeps_the_records_for_the_next_round(tmp_path: t.Any) -> None:
    spool = Spool(str(tmp_path / "spool"), "signups")
    for user in ("a", "b", "c"):
        spool.append(event(user), CAUSE)
    recorder = Recorder()
    recorder.fail = True
    with pytest.raises(StoreError):
        spool.drain(recorder)
    spool.append(event("d"), CAUSE)  # logins keep spooling meanwhile
    assert spool.depth() == 4
    assert spool.degraded_since is not None
    recorder.fail = False
    spool.drain(recorder)  # the held file first, the new one at the next round
    spool.drain(recorder)
    assert sorted(e.user_id for e in recorder.seen) == ["a", "b", "c", "d"]
    assert spool.depth() == 0
    assert spool.degraded_since is None


def test_a_live_processs_file_is_never_taken(tmp_path: t.Any) -> None:
    directory = str(tmp_path / "spool")
    alive = Spool(directory, "signups")
    alive.append(event("a"), CAUSE)
    other = Spool(directory, "signups")  # another process, as far as flock goes
    assert other.drain(Recorder()) is None
    assert alive.depth() == 1
    alive.close()
    assert other.drain(Recorder()) is not None
    assert other.depth() == 0


def test_another_collections_files_are_left_alone(tmp_path: t.Any) -> None:
    directory = str(tmp_path / "spool")
    mine = Spool(directory, "signups")
    theirs = Spool(directory, "trials")
    theirs.append(QueuedEvent("trials", "a", "t" * 64, {"userId": "a"}), CAUSE)
    theirs.close()
    assert mine.drain(Recorder()) is None
    assert mine.depth() == 0 and theirs.depth() == 1


def test_a_forked_child_gets_its_own_file_and_the_parent_keeps_its_lock(tmp_path: t.Any) -> None:
    directory = str(tmp_path / "spool")
    spool = Spool(directory, "signups")
    spool.append(event("parent"), CAUSE)
    (parent_file,) = files(directory)
    pid = os.fork()
    if pid == 0:  # the child: spool one record, then exit without cleanup
        try:
            spool.append(event("child"), CAUSE)
            fd = os.open(os.path.join(directory, parent_file), os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os._exit(3)  # the parent's lock must still hold in the child
            except BlockingIOError:
                os._exit(0)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(files(directory)) == 2
    recorder = Recorder()
    spool.drain(recorder)  # its own file, and the exited child's
    assert sorted(e.user_id for e in recorder.seen) == ["child", "parent"]
    assert files(directory) == []


def test_a_full_spool_refuses_with_a_store_error(tmp_path: t.Any) -> None:
    spool = Spool(str(tmp_path / "spool"), "signups", max_file_bytes=300)
    spool.append(event("a"), CAUSE)
    with pytest.raises(StoreError, match="reached 300 bytes"):
        for n in range(10):
            spool.append(event(f"user{n}"), CAUSE)


def test_fsync_mode_writes_the_same_records(tmp_path: t.Any) -> None:
    spool = Spool(str(tmp_path / "spool"), "signups", fsync=True)
    spool.append(event("a"), CAUSE)
    assert spool.depth() == 1


@pytest.mark.parametrize("atomic", [True, False], ids=["one-transaction", "claim-then-queue"])
def test_sqlite_decider_claims_then_queues_and_drops_known_users(
    tmp_path: t.Any, atomic: bool
) -> None:
    from flask_keen_signup.backends.sqlite import claim_and_enqueue_many

    database = Database(str(tmp_path / "db.sqlite3"))
    ledger, outbox = SQLiteStore(database, "signups"), SQLiteOutbox(database)
    ledger.confirm("auth0|returning")
    decide = (
        claim_and_enqueue_many(ledger, outbox)
        if atomic
        else functools.partial(claim_then_enqueue, ledger, outbox)
    )
    won = decide([event("auth0|new"), event("auth0|returning"), event("auth0|new")])
    assert list(won) == [True, False, False]
    assert outbox.pending_count() == 1


def test_without_a_shared_claim_the_decider_only_queues(tmp_path: t.Any) -> None:
    outbox = MemoryOutbox()
    assert claim_then_enqueue(None, outbox, [event("a"), event("b")]) == [True, True]
    assert outbox.pending_count() == 2
