"""Erasure and retention reach the bytes on disk (DESIGN §2 guarantee 5, issue 16 item 4).

Real logins through the Auth0 emulator, delivered to the Keen emulator, then ``flask
keen-signup forget`` / ``prune`` and the sender's own retention pass: the raw bytes of every
file of the store (the SQLite file, its ``-wal`` and ``-shm``, every spool file) are read,
and the forgotten user's sub, name, email and IP, or the retained users' names, emails and
IPs, are found nowhere. Each test first checks that the bytes *were* there, so it can fail.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import typing as t

import pytest
from _flow import login
from _flow import quickstart_app
from flask import Flask

from flask_keen_signup import signup_state
from flask_keen_signup.database import Database
from flask_keen_signup.delivery import QueuedEvent
from flask_keen_signup.delivery.sender import Sender
from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox
from flask_keen_signup.events import uniqueness_token
from flask_keen_signup.keen import KeenClient
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

COLLECTION = "signups"

#: (email, name, IP) of each user logging in.
PEOPLE = {
    "ada": ("ada.private@example.com", "Ada Zqxlovelace", "198.51.100.23"),
    "bob": ("bob.private@example.com", "Bob Zqxbuilder", "198.51.100.47"),
}


def _store_files(database: str) -> dict[str, bytes]:
    """Every file of the store, by name: the SQLite file, -wal, -shm, the spool files."""
    files = {}
    for path in (database, database + "-wal", database + "-shm"):
        if os.path.exists(path):
            with open(path, "rb") as f:
                files[os.path.basename(path)] = f.read()
    spool = database + ".spool"
    if os.path.isdir(spool):
        for name in os.listdir(spool):
            with open(os.path.join(spool, name), "rb") as f:
                files[name] = f.read()
    return files


def _found(database: str, needles: t.Iterable[str]) -> dict[str, list[str]]:
    """Which needles occur in which file (empty: none anywhere)."""
    files = _store_files(database)
    found: dict[str, list[str]] = {}
    for needle in needles:
        where = [name for name, data in files.items() if needle.encode() in data]
        if where:
            found[needle] = where
    return found


def _app(auth0: Auth0Emulator, keen: KeenEmulator, database: str) -> tuple[Flask, t.Any]:
    app, _ = quickstart_app(
        auth0, keen, database, KEEN_SIGNUP_CLAIMS=["name", "email"], KEEN_SIGNUP_IP="full"
    )
    state = signup_state(app)
    return app, state


def _log_in_everyone(app: Flask, auth0: Auth0Emulator) -> dict[str, str]:
    subs = {}
    for who, (email, name, ip) in PEOPLE.items():
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = ip
        assert login(client, auth0, email, name=name).status_code == 302
        subs[who] = next(u["user_id"] for u in auth0.users() if u["email"] == email)
    return subs


def _spooled(who: str, sub: str) -> QueuedEvent:
    """The signup a login would have spooled if the store had been slow (DESIGN §2.3)."""
    email, name, ip = PEOPLE[who]
    token = uniqueness_token(COLLECTION, sub)
    body = {"userId": sub, "name": name, "email": email, "ip": ip, "keen": {}}
    return QueuedEvent(COLLECTION, sub, token, body)


class _Reader:
    """Another connection holding a read transaction on the file for ``seconds``: a
    ``TRUNCATE`` checkpoint cannot finish meanwhile."""

    def __init__(self, database: str, seconds: float) -> None:
        self.conn = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        self.conn.execute("BEGIN")
        self.conn.execute("SELECT COUNT(*) FROM keen_signup_outbox").fetchone()
        self.timer = threading.Timer(seconds, self.release)
        self.timer.start()

    def release(self) -> None:
        self.conn.execute("COMMIT")
        self.conn.close()


@pytest.mark.parametrize("reader", [False, True], ids=["alone", "with-a-reader"])
def test_forget_leaves_none_of_the_users_bytes_in_any_file(
    tmp_path: t.Any,
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
    reader: bool,
) -> None:
    database = str(tmp_path / "bytes.sqlite3")
    app, state = _app(keen_signup_auth0, keen_signup_keen, database)
    try:
        subs = _log_in_everyone(app, keen_signup_auth0)
        assert state.sender.flush(timeout=20) == 0
        state.sender.stop(timeout=5)
        # Ada also has a signup in the local spool (a login while the store was slow).
        assert state.spool is not None
        state.spool.append(_spooled("ada", subs["ada"]), TimeoutError("slow store"))
        ada = [subs["ada"], *PEOPLE["ada"]]
        before = _found(database, ada)
        assert set(before) == set(ada), before
        assert any(name.endswith(".jsonl") for names in before.values() for name in names)

        holder = _Reader(database, 1.0) if reader else None
        result = app.test_cli_runner().invoke(
            args=["keen-signup", "forget", subs["ada"], "--local-only"]
        )
        assert result.exit_code == 0, result.output
        if holder is not None:
            holder.timer.join()
        assert _found(database, ada) == {}
        bob = [subs["bob"], *PEOPLE["bob"]]
        assert set(_found(database, bob)) == set(bob), "nobody else is touched"
        assert os.path.getsize(database + "-wal") == 0

        state.sender.start()  # the blanked spool record is decided as nothing
        assert state.sender.flush(timeout=20) == 0
        assert state.spool.depth() == 0
        assert sorted(e["userId"] for e in keen_signup_keen.events(COLLECTION)) == sorted(
            subs.values()
        )
    finally:
        state.sender.shutdown(timeout=5)


def test_prune_leaves_no_body_bytes_in_any_file(
    tmp_path: t.Any, keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator
) -> None:
    database = str(tmp_path / "prune.sqlite3")
    app, state = _app(keen_signup_auth0, keen_signup_keen, database)
    try:
        _log_in_everyone(app, keen_signup_auth0)
        assert state.sender.flush(timeout=20) == 0
        personal = [value for person in PEOPLE.values() for value in person]
        assert set(_found(database, personal)) == set(personal)
        result = app.test_cli_runner().invoke(args=["keen-signup", "prune", "--older-than", "0"])
        assert result.exit_code == 0, result.output
        assert "dropped the body of 2 delivered event(s)" in result.output
        assert _found(database, personal) == {}
    finally:
        state.sender.shutdown(timeout=5)


def test_the_senders_retention_pass_leaves_no_body_bytes(
    tmp_path: t.Any, keen_signup_keen: KeenEmulator
) -> None:
    path = str(tmp_path / "retention.sqlite3")
    box = SQLiteOutbox(Database(path))
    for who in PEOPLE:
        box.enqueue(_spooled(who, f"auth0|{who}-retained"))
    personal = [value for person in PEOPLE.values() for value in person]
    assert set(_found(path, personal)) == set(personal)
    keen = keen_signup_keen
    client = KeenClient(keen.project_id, keen.write_key, api_url=keen.url)
    sender = Sender(
        box,
        client,
        flush_interval=0.02,
        handle_signals=False,
        retention=0.0,
        retention_check_interval=0.05,
    )
    sender.start()
    try:
        deadline = time.monotonic() + 30
        while _found(path, personal) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _found(path, personal) == {}
        assert len(keen.events(COLLECTION)) == 2
    finally:
        sender.shutdown(2)
        client.close()
        box.close()
