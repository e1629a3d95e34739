"""``is_orphan``: which lease owners (``host/pid/nonce``) are certainly dead."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flask_keen_signup.delivery.leases import HOSTNAME
from flask_keen_signup.delivery.leases import is_orphan


def _gone_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


@pytest.mark.parametrize(
    ("owner", "dead"),
    [
        (f"{HOSTNAME}/{os.getpid()}/no-sender-holds-this", True),  # this pid, unknown nonce
        (f"{HOSTNAME}/{os.getppid()}/n", False),  # a live process
        (f"another-{HOSTNAME}/1/n", False),  # another host: never judged from here
        (f"{HOSTNAME}/not-a-pid/n", False),
        (f"{HOSTNAME}/12", False),  # malformed: not ours to expire
        ("", False),
    ],
)
def test_is_orphan(owner: str, dead: bool) -> None:
    assert is_orphan(owner) is dead


def test_a_gone_process_is_an_orphan() -> None:
    assert is_orphan(f"{HOSTNAME}/{_gone_pid()}/n")
