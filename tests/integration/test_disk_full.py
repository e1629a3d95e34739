"""A full disk under the running app: signups that cannot be recorded are never silent.

A real full file system: a small tmpfs mounted for the test (the test runs as root, as CI
does), holding the app's SQLite file, its spool and its count of signups not recorded,
then filled to the last byte. Issue 16: 197 of 200 signups were "not recorded" (one ERROR
each) and, once space was back, the verdict was ``ok`` with no trace of them.

Mounting needs CAP_SYS_ADMIN; where it is refused (as in test_unusable_database.py) that
test skips, and the second one still runs unprivileged: a child process whose files may
not grow past 64 bytes (``RLIMIT_FSIZE``: every write past it fails with EFBIG, as on a
full disk where only blocks already allocated can be overwritten).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import signal
import subprocess
import typing as t
from pathlib import Path

import pytest
from _flow import quickstart_app
from flask import Flask
from prometheus_client import REGISTRY

from flask_keen_signup import KeenSignup
from flask_keen_signup import TrackOutcome
from flask_keen_signup import signup_state
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator


@pytest.fixture
def small_disk(tmp_path: Path) -> t.Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:  # a missing privilege, not a missing service: see the doc
        pytest.skip(f"mounting a tmpfs needs CAP_SYS_ADMIN: {done.stderr!r}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system says ENOSPC (down to single bytes)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def not_recorded_counter() -> float:
    value = REGISTRY.get_sample_value("keen_signup_signups_total", {"outcome": "not_recorded"})
    assert value is not None
    return value


def track(app: Flask, sub: str) -> TrackOutcome | None:
    with app.test_request_context():
        return KeenSignup().track_claims({"sub": sub, "name": sub})


def test_signups_lost_to_a_full_disk_are_counted_until_someone_looks(
    small_disk: Path,
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, _ = quickstart_app(
        keen_signup_auth0, keen_signup_keen, str(small_disk / "keen_signup.sqlite3")
    )
    state = signup_state(app)
    try:
        assert track(app, "auth0|before") is TrackOutcome.QUEUED
        assert state.sender.flush(10) == 0
        counted_before = not_recorded_counter()
        filler = fill(small_disk)
        outcomes = [track(app, f"auth0|full{n}") for n in range(40)]
        lost = outcomes.count(None)
        assert lost > 0  # the disk is full: some (usually all) signups cannot be recorded
        errors = [r for r in caplog.records if "not recorded" in r.getMessage()]
        assert len(errors) == lost
        health = KeenSignup().health(app)
        assert health["not_recorded"] == lost
        assert health["verdict"] != "ok" and health["ok"] is False
        assert not_recorded_counter() - counted_before == lost

        filler.unlink()  # space is back: the count stays until someone looks
        assert track(app, "auth0|after") is TrackOutcome.QUEUED
        health = KeenSignup().health(app)
        assert health["not_recorded"] == lost
        assert any("not recorded" in reason for reason in health["reasons"])
        runner = app.test_cli_runner()
        status = runner.invoke(args=["keen-signup", "status"])
        assert f"not recorded:      {lost} (since" in status.output, status.output
        looked = runner.invoke(args=["keen-signup", "status", "--acknowledge"])
        assert f"acknowledged:      {lost} signup(s) not recorded" in looked.output
        health = KeenSignup().health(app)
        assert health["not_recorded"] == 0
        assert not any("not recorded" in reason for reason in health["reasons"])
    finally:
        state.sender.shutdown(timeout=5)
        state.database.close()


def test_files_that_cannot_grow_lose_signups_loudly_without_privileges(
    tmp_path: Path, keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator
) -> None:
    app, _ = quickstart_app(
        keen_signup_auth0, keen_signup_keen, str(tmp_path / "keen_signup.sqlite3")
    )
    state = signup_state(app)
    assert track(app, "auth0|before") is TrackOutcome.QUEUED
    state.sender.stop(5)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            logging.disable(logging.CRITICAL)  # stderr is a file too: it cannot grow either
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))
            try:
                outcomes = [track(app, f"auth0|full{n}") for n in range(10)]
                during = KeenSignup().health(app)
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            after = track(app, "auth0|after")
            health = KeenSignup().health(app)
            result = {
                "lost": outcomes.count(None),
                "during": during["not_recorded"],
                "after": None if after is None else after.value,
                "not_recorded": health["not_recorded"],
                "verdict": health["verdict"],
                "reasons": health["reasons"],
            }
        except BaseException as exc:  # noqa: BLE001
            result = {"crashed": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks))
    assert "crashed" not in result, result
    assert result["lost"] == 10 and result["during"] == 10
    assert result["after"] == "queued"  # the files may grow again: signups are recorded
    assert result["not_recorded"] == 10  # and the lost ones are still counted
    assert result["verdict"] != "ok"
    assert any("10 signup(s) not recorded" in r for r in result["reasons"])
    # The count is in the file: this process (another one) sees it too.
    health = KeenSignup().health(app)
    assert health["not_recorded"] == 10
    state.sender.shutdown(timeout=5)
