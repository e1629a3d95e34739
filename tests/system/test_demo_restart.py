"""Restarting the offline demo must not look like a duplicate signup.

The Auth0 emulator, the Keen emulator and the extension each keep their data in the demo's
instance folder, so after a restart a returning email is the same Auth0 user, already marked,
and Keen still holds exactly one signup for them.
"""

from __future__ import annotations

import socket
import typing as t
from pathlib import Path

import _paths
import pytest

from flask_keen_signup import signup_state
from flask_keen_signup.testing import flow

ROOT = Path(_paths.ROOT)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_demo_once(instance: Path, port: int, email: str) -> tuple[str, int]:
    """Start the offline demo on ``instance``, log ``email`` in, deliver, stop.

    Returns the Auth0 user id and how many signups the Keen emulator holds.
    """
    from example_app.offline import start_offline_app

    app, auth0, keen = start_offline_app(app_port=port, instance_path=str(instance))
    try:
        app.config["SERVER_NAME"] = f"localhost:{port}"  # the callback URL it registered
        client = app.test_client()
        response = flow.login(client, email, "correct horse", name="Ada")
        assert response.status_code == 302
        flow.deliver(app)
        (user,) = [u for u in auth0.users() if u["email"] == email]
        return user["user_id"], len(keen.events("signups"))
    finally:
        signup_state(app).sender.shutdown(timeout=5)
        auth0.stop()
        keen.stop()


def test_a_restarted_demo_knows_its_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # example_app/ is beside the package
    instance = tmp_path / "instance"
    port = _free_port()
    first_id, first_count = _run_demo_once(instance, port, "ada@example.com")
    assert first_count == 1
    assert (instance / "auth0-emulator.sqlite3").exists()
    second_id, second_count = _run_demo_once(instance, port, "ada@example.com")
    assert second_id == first_id, "the same person is the same Auth0 user after a restart"
    assert second_count == 1, "and still one signup in Keen"


def test_the_auth0_emulator_alone_keeps_users_in_its_database(tmp_path: Path) -> None:
    from flask_keen_signup.testing import Auth0Emulator

    path = str(tmp_path / "users.sqlite3")
    kwargs: dict[str, t.Any] = {"client_id": "c", "client_secret": "s", "database": path}
    with Auth0Emulator(**kwargs) as auth0:
        user = auth0.add_user(email="a@x.io", created_at="2021-01-01T00:00:00.000Z")
    with Auth0Emulator(**kwargs) as again:
        kept = again.get_user(user["user_id"])
    assert kept is not None and kept["created_at"] == user["created_at"]


def test_a_fresh_demo_does_not_ask_to_migrate_and_reports_the_real_created_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The demo's tenant starts empty: nobody to migrate, so no day-one warning; its
    ``KEEN_SIGNUP_SINCE`` is its first start, kept across restarts."""
    import logging

    from example_app.offline import start_offline_app

    monkeypatch.syspath_prepend(str(ROOT))
    instance = tmp_path / "instance"
    with caplog.at_level(logging.WARNING, logger="flask_keen_signup"):
        app, auth0, keen = start_offline_app(app_port=_free_port(), instance_path=str(instance))
        try:
            since = app.config["KEEN_SIGNUP_SINCE"]
            from flask_keen_signup.assembly import load_known_users as _load_known_users

            _load_known_users(signup_state(app).tracker)
        finally:
            signup_state(app).sender.shutdown(timeout=5)
            auth0.stop()
            keen.stop()
    assert not [r for r in caplog.records if "keen-signup migrate" in r.getMessage()]
    assert (instance / "demo-first-start.txt").read_text() == since
    port = _free_port()
    _run_demo_once(instance, port, "grace@example.com")
    from example_app.offline import _first_start

    assert _first_start(str(instance)) == since  # kept, not moved to the restart
