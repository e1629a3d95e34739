"""A full disk under the running app: signups that cannot be recorded are never silent.

A real full file system: a small tmpfs mounted for the test (the test runs as root, as CI
does), holding the app's SQLite file, its spool and its count of signups not recorded,
then filled to the last byte. Issue 16: 197 of 200 signups were "not recorded" (one ERROR
each) and, once space was back, the verdict was ``ok`` with no trace of them.
"""

from __future__ import annotations

import errno
import os
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
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must be able to mount a tmpfs (root): {done.stderr!r}")
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
