"""One process-lifecycle module runs every at-fork and at-exit step in ``ORDER``.

A real ``os.fork``: each step's functions are swapped (for the test) for ones that write
their name and phase down, in the parent and through a pipe from the child.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import typing as t

import pytest

from flask_keen_signup import lifecycle

PHASES = ("before", "after_in_parent", "after_in_child", "at_exit")


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.delitem(sys.modules, "gevent.monkey", raising=False)  # no patch to wait for
    seen: list[str] = []
    for name in lifecycle.ORDER:
        steps = {phase: (lambda n=name, p=phase: seen.append(f"{p}:{n}")) for phase in PHASES}
        monkeypatch.setitem(lifecycle._steps, name, steps)
    return seen


# (phase, the steps in the order they run)
CASES = [
    ("before", ["sqlite", "metrics", "spool", "postgres", "senders"]),
    ("after_in_parent", ["senders", "postgres", "spool", "metrics", "sqlite"]),
    ("after_in_child", ["sqlite", "metrics", "spool", "postgres", "senders"]),
    ("at_exit", ["senders", "postgres", "spool", "metrics", "sqlite"]),
]


@pytest.mark.parametrize(("phase", "order"), CASES, ids=[case[0] for case in CASES])
def test_each_phase_runs_every_step_in_its_order(
    calls: list[str], phase: str, order: list[str]
) -> None:
    run = {
        "before": lifecycle._before_fork,
        "after_in_parent": lifecycle._after_fork_in_parent,
        "after_in_child": lifecycle._after_fork_in_child,
        "at_exit": lifecycle._at_exit,
    }[phase]
    run()
    assert calls == [f"{phase}:{name}" for name in order]


def test_a_real_fork_runs_the_steps_before_and_after_in_both_processes(
    calls: list[str],
) -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.write(write, ",".join(calls).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        child = f.read().decode().split(",")
    os.waitpid(pid, 0)
    before = [f"before:{name}" for name in lifecycle.ORDER]
    assert child == before + [f"after_in_child:{name}" for name in lifecycle.ORDER]
    assert calls == before + [f"after_in_parent:{name}" for name in reversed(lifecycle.ORDER)]


def test_a_failing_step_is_logged_and_the_others_still_run(
    calls: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setitem(lifecycle._steps, "metrics", {"at_exit": broken})
    lifecycle._at_exit()
    assert calls == ["at_exit:senders", "at_exit:postgres", "at_exit:spool", "at_exit:sqlite"]
    assert "'metrics' step failed" in caplog.text


@pytest.mark.parametrize(
    ("name", "phases"),
    [("redis", {"before": print}), ("sqlite", {"after_fork": print})],
    ids=["unknown-step", "unknown-phase"],
)
def test_an_unknown_step_or_phase_is_refused(name: str, phases: dict[str, t.Any]) -> None:
    with pytest.raises(ValueError, match="unknown step"):
        lifecycle.register(name, **phases)


def test_the_package_registers_every_step() -> None:
    import flask_keen_signup.delivery.sender  # noqa: F401
    import flask_keen_signup.extension  # noqa: F401 - imports every part
    import flask_keen_signup.postgres_pools  # noqa: F401
    import flask_keen_signup.spool  # noqa: F401

    assert all(lifecycle._steps[name] for name in lifecycle.ORDER)
    assert "after_in_child" in lifecycle._steps["senders"]
    assert "at_exit" in lifecycle._steps["sqlite"]


def test_a_starting_sender_moves_the_exit_steps_before_the_hooks_registered_earlier() -> None:
    script = textwrap.dedent(
        """
        import atexit
        from flask_keen_signup import lifecycle

        lifecycle.register("spool", at_exit=lambda: print("flush", flush=True))
        atexit.register(lambda: print("set up before the sender", flush=True))
        lifecycle.exit_first()  # what a sender does as it starts
        atexit.register(lambda: print("set up after the sender", flush=True))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split("\n")[:3] == [
        "set up after the sender",
        "flush",
        "set up before the sender",
    ]
