"""The known-users table (``flask_keen_signup.known_users``): digests in flat arrays that
must answer exactly as a bounded first-in-first-out set of the ids would."""

from __future__ import annotations

import random

import pytest

from flask_keen_signup.known_users import KnownUsers


def _check_against_a_fifo_set(known: KnownUsers, names: list[str], steps: int) -> None:
    rng = random.Random(19)
    reference: dict[str, None] = {}
    for _ in range(steps):
        name = rng.choice(names)
        known.add(name)
        if name not in reference:
            reference[name] = None
            if len(reference) > known.maximum:
                del reference[next(iter(reference))]
        assert len(known) == len(reference)
        assert [n for n in names if n in known] == [n for n in names if n in reference]


@pytest.mark.parametrize("maximum", [1, 2, 3, 7, 50])
def test_answers_as_a_bounded_fifo_set(maximum: int) -> None:
    names = [f"auth0|u{n}" for n in range(3 * maximum + 5)]
    _check_against_a_fifo_set(KnownUsers(maximum), names, 2_000)


class Crowded(str):
    """An id whose ``hash()`` names one of three slots: every probe runs long."""

    def __hash__(self) -> int:
        return int(self[1:]) % 3


def test_entries_probed_past_a_forgotten_one_stay_found() -> None:
    """Ids crowded onto three home slots: forgetting one moves the others back."""
    _check_against_a_fifo_set(KnownUsers(20), [Crowded(f"x{n}") for n in range(60)], 3_000)


def test_ids_sharing_a_hash_are_told_apart_by_the_second_digest() -> None:
    known = KnownUsers(10)
    known.add(Crowded("x1"))
    assert Crowded("x1") in known and Crowded("x4") not in known


def test_the_load_fills_the_room_left_and_forgets_no_one() -> None:
    known = KnownUsers(maximum=3)
    known.add("auth0|seen-by-a-request")
    assert known.add_many(["auth0|a", "auth0|seen-by-a-request", "auth0|b", "auth0|c"]) == 2
    assert len(known) == 3
    assert all(u in known for u in ("auth0|seen-by-a-request", "auth0|a", "auth0|b"))
    assert "auth0|c" not in known and 42 not in known


FORK_WHILE_LOCKED = """
import os
from flask_keen_signup.known_users import KnownUsers

known = KnownUsers(maximum=5)
known._lock.acquire()  # the start-up load's thread, mid-insert, when the server forks
pid = os.fork()
if pid == 0:  # the child: that thread is not here, its lock stays held
    known.add("auth0|after-the-fork")
    os._exit(0 if "auth0|after-the-fork" in known else 1)
known._lock.release()
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""


def test_a_process_forked_while_the_lock_was_held_still_remembers() -> None:
    """In a process of its own: forking a process that runs threads warns from 3.12 on."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FORK_WHILE_LOCKED], timeout=30, check=False)
    assert done.returncode == 0
