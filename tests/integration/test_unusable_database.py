"""An unusable ``KEEN_SIGNUP_DATABASE`` (issue 10, item 7).

Known at start (a directory where the file should be, a file that is not SQLite, a path
under a file, a read-only file system, no permission): ``init_app`` raises one
``ConfigurationError`` naming the key and the reason. Broken later (the outbox table gone
under a running app): one loud log line per episode and one when it works again, not a
traceback every flush interval; ``health()`` and ``flask keen-signup status`` report the
error instead of raising. Real files, a real Keen emulator.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import typing as t

import pytest
from _sqlite import open_sqlite
from flask import Flask
from hypothesis import HealthCheck
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from flask_keen_signup import KeenSignup
from flask_keen_signup import signup_state
from flask_keen_signup.delivery.sqlite_outbox import SCHEMA as OUTBOX_SCHEMA
from flask_keen_signup.exceptions import ConfigurationError
from flask_keen_signup.testing import KeenEmulator


def _app(database: str, keen: KeenEmulator | None = None, **config: t.Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        {
            "KEEN_PROJECT_ID": keen.project_id if keen else "p",
            "KEEN_WRITE_KEY": keen.write_key if keen else "w",
            "KEEN_API_URL": keen.url if keen else "http://127.0.0.1:9",
            "KEEN_SIGNUP_DATABASE": database,
            "KEEN_SIGNUP_FLUSH_INTERVAL": 0.02,
            **config,
        }
    )
    return app


def _refused(database: str) -> str:
    app = _app(database)
    with pytest.raises(ConfigurationError) as info:
        KeenSignup(app)
    message = str(info.value)
    assert "KEEN_SIGNUP_DATABASE" in message
    assert "\n" not in message and "Traceback" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__ in (True, False)
    assert "keen_signup" not in app.extensions, "nothing half-initialised is left"
    return message


def test_a_directory_where_the_file_should_be(tmp_path: t.Any) -> None:
    path = tmp_path / "keen_signup.sqlite3"
    path.mkdir()
    assert "is a directory" in _refused(str(path))


def test_a_file_that_is_not_sqlite(tmp_path: t.Any) -> None:
    path = tmp_path / "keen_signup.sqlite3"
    path.write_text("name,email\nada,ada@example.com\n")
    assert "not a SQLite database" in _refused(str(path))
    assert path.read_text().startswith("name,email"), "the file is left alone"


def test_a_path_under_a_file(tmp_path: t.Any) -> None:
    blocker = tmp_path / "instance"
    blocker.write_text("not a directory")
    assert "is not a directory" in _refused(str(blocker / "keen_signup.sqlite3"))


def test_a_corrupt_sqlite_file(tmp_path: t.Any) -> None:
    path = tmp_path / "keen_signup.sqlite3"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    assert "not usable" in _refused(str(path))


def test_a_read_only_file_system(tmp_path: t.Any) -> None:
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:  # not a missing service: a missing privilege, even on CI
        pytest.skip(f"mounting a read-only tmpfs needs CAP_SYS_ADMIN: {done.stderr!r}")
    try:
        assert "read-only file system" in _refused(str(mount_point / "keen_signup.sqlite3"))
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_no_permission(tmp_path: t.Any) -> None:
    """As root (who may write anywhere), checked in a child process running as ``nobody``."""
    directory = tmp_path / "locked"
    directory.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(directory, 0o555)  # nobody may not create the file or its -wal
    if os.geteuid() != 0:
        assert "no permission" in _refused(str(directory / "keen_signup.sqlite3"))
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                KeenSignup(_app(str(directory / "keen_signup.sqlite3")))
                result = "started"
            except ConfigurationError as exc:
                result = str(exc)
        except BaseException as exc:  # noqa: BLE001
            result = f"crashed: {type(exc).__name__}: {exc}"
        os.write(write, result.encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    message = b"".join(chunks).decode()
    assert "KEEN_SIGNUP_DATABASE" in message and "no permission" in message, message


def test_a_good_path_still_starts_and_creates_the_file(tmp_path: t.Any) -> None:
    path = tmp_path / "deep" / "er" / "keen_signup.sqlite3"
    app = _app(str(path))
    KeenSignup(app)
    try:
        assert path.is_file() and path.read_bytes().startswith(b"SQLite format 3\x00")
    finally:
        signup_state(app).sender.shutdown(timeout=2)


def test_breaking_later_is_one_loud_line_per_episode_and_health_reports_it(
    tmp_path: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_keen_signup")
    path = str(tmp_path / "keen_signup.sqlite3")
    with KeenEmulator() as keen:
        app = _app(path, keen)
        signup = KeenSignup(app)
        state = signup_state(app)
        try:
            assert signup.health(app)["store_error"] is None
            # Someone's bad restore script replaces the outbox table with another one under
            # the running app. (A plain DROP would heal itself: every new connection runs
            # the CREATE ... IF NOT EXISTS schema.)
            with open_sqlite(path) as conn:
                conn.execute("DROP TABLE keen_signup_outbox")
                conn.execute("CREATE TABLE keen_signup_outbox (restored_by_mistake INTEGER)")

            def loud() -> list[logging.LogRecord]:
                return [
                    r
                    for r in caplog.records
                    if r.levelno >= logging.ERROR and "outbox cannot be used" in r.getMessage()
                ]

            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not loud():
                time.sleep(0.05)
            time.sleep(1.0)  # ~50 more flush intervals of 0.02 s: still one line
            assert len(loud()) == 1, [r.getMessage() for r in caplog.records][-5:]
            loud_line = loud()[0]
            assert loud_line.exc_info is None, "one line, not a traceback"
            assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]

            health = signup.health(app)  # does not raise
            assert "no such column" in health["store_error"]
            assert health["pending"] is None
            result = app.test_cli_runner().invoke(args=["keen-signup", "status"])
            assert result.exit_code != 0
            assert "no such column" in result.output and "Traceback" not in result.output
            assert "pending:           -" in result.output

            # Repaired: the next round works, one recovery line, and delivery resumes.
            with open_sqlite(path) as conn:
                conn.execute("DROP TABLE keen_signup_outbox")
                conn.executescript(OUTBOX_SCHEMA)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not [
                r for r in caplog.records if "works again" in r.getMessage()
            ]:
                time.sleep(0.05)
            assert len([r for r in caplog.records if "works again" in r.getMessage()]) == 1
            assert signup.health(app)["store_error"] is None
            with app.test_request_context():
                signup.track_claims({"sub": "auth0|after-repair", "name": "Ada"})
            assert state.sender.flush(timeout=20) == 0
            assert [e["userId"] for e in keen.events("signups")] == ["auth0|after-repair"]
            ok = app.test_cli_runner().invoke(args=["keen-signup", "status"])
            assert ok.exit_code == 0, ok.output
        finally:
            state.sender.shutdown(timeout=2)


def test_health_of_a_database_gone_bad_without_a_sender_thread(tmp_path: t.Any) -> None:
    path = str(tmp_path / "keen_signup.sqlite3")
    app = _app(path)
    signup = KeenSignup(app)
    state = signup_state(app)
    state.sender.stop(timeout=2)
    try:
        with open_sqlite(path) as conn:
            conn.execute("DROP TABLE keen_signup_dead_letters")
        health = signup.health(app)
        assert health["store_error"] and health["dead"] is None
    finally:
        state.sender.shutdown(timeout=2)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@example(name="a\x00b")
@example(name="x" * 300)
@example(name="ok/\n\x1b[31m.sqlite3")
@given(name=st.text(min_size=1, max_size=300).filter(lambda s: ".." not in s))
def test_any_database_path_starts_or_is_a_configuration_error(name: str) -> None:
    """Whatever text KEEN_SIGNUP_DATABASE holds (inside a scratch directory), ``init_app``
    starts or raises ``ConfigurationError`` naming the key; never another exception."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        app = _app(os.path.join(scratch, "d", name))
        try:
            KeenSignup(app)
        except ConfigurationError as exc:
            assert "KEEN_SIGNUP_DATABASE" in str(exc)
            assert "\n" not in str(exc)
            return
        signup_state(app).sender.shutdown(timeout=2)
