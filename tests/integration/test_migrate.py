"""``flask keen-signup migrate``: the day one of a team leaving the Auth0 Rule, end to end.

Real Auth0 and Keen emulators over HTTP, a real SQLite file, logins through the real
Authlib flow, the command through Flask's CLI runner.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import re
import typing as t

import pytest
from _flow import login
from _flow import quickstart_app
from _sqlite import open_sqlite
from flask import Flask

from flask_keen_signup import signup_state
from flask_keen_signup.events import uniqueness_token
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

CUTOFF = "2026-11-18T00:00:00Z"
CUTOFF_AT = dt.datetime(2026, 11, 18, tzinfo=dt.timezone.utc)


def management(auth0: Auth0Emulator) -> dict[str, str]:
    return {
        "KEEN_SIGNUP_AUTH0_DOMAIN": auth0.url,
        "KEEN_SIGNUP_AUTH0_CLIENT_ID": auth0.m2m_client_id,
        "KEEN_SIGNUP_AUTH0_CLIENT_SECRET": auth0.m2m_client_secret,
        "KEEN_SIGNUP_AUTH0_REQUESTS_PER_SECOND": "1000",
    }


@pytest.fixture
def make_app(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, tmp_path: t.Any
) -> t.Iterator[t.Callable[..., Flask]]:
    apps: list[Flask] = []

    def make(**config: t.Any) -> Flask:
        app, _ = quickstart_app(
            keen_signup_auth0, keen_signup_keen, str(tmp_path / "migrate.sqlite3"), **config
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        signup_state(app).sender.shutdown(timeout=5)


def table(output: str) -> dict[str, int]:
    """The summary table's rows: ``name  count`` with a plain integer."""
    rows = {}
    for line in output.splitlines():
        match = re.fullmatch(r"([a-z_ ()]+?)\s{2,}(\d+)", line.strip())
        if match:
            rows[match.group(1)] = int(match.group(2))
    return rows


def migrate(app: Flask, *args: str) -> t.Any:
    return app.test_cli_runner().invoke(
        args=["keen-signup", "migrate", "--reported-until", CUTOFF, *args]
    )


def ledger_rows(app: Flask) -> tuple[int, int]:
    """(markers, outbox rows) in the app's SQLite file, read with a separate connection."""
    path = app.config["KEEN_SIGNUP_DATABASE"]
    with open_sqlite(path) as conn:
        markers = conn.execute("SELECT COUNT(*) FROM keen_signup_markers").fetchone()[0]
        outbox = conn.execute("SELECT COUNT(*) FROM keen_signup_outbox").fetchone()[0]
    return markers, outbox


def signups(keen: KeenEmulator) -> list[dict[str, t.Any]]:
    return list(keen.events("signups"))


def test_a_2500_user_tenant_through_the_export_job_then_real_logins(
    make_app: t.Callable[..., Flask],
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
) -> None:
    auth0 = keen_signup_auth0
    # 2,400 users the Rule reported (created before the cutoff), 60 who signed up while no
    # Rule ran, and 37 created after the cutoff that the Rule still marked (it ran late).
    auth0.load_users(
        2400,
        created_from=dt.datetime(2019, 1, 1, tzinfo=dt.timezone.utc),
        created_to=dt.datetime(2026, 11, 17, tzinfo=dt.timezone.utc),
        seed=1,
    )
    auth0.load_users(
        60,
        created_from=dt.datetime(2026, 11, 18, 0, 0, 1, tzinfo=dt.timezone.utc),
        created_to=dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc),
        marked=0.0,
        seed=2,
    )
    auth0.load_users(
        37,
        created_from=dt.datetime(2026, 11, 18, 0, 0, 1, tzinfo=dt.timezone.utc),
        created_to=dt.datetime(2026, 11, 19, tzinfo=dt.timezone.utc),
        marked=1.0,
        seed=3,
    )
    old = auth0.add_user(
        email="old@x.io", name="Old", created_at="2020-05-05T05:05:05.000Z", logins_count=40
    )
    gap = auth0.add_user(email="gap@x.io", name="Gap", created_at="2026-11-20T10:00:00.000Z")
    exactly = auth0.add_user(email="cut@x.io", created_at="2026-11-18T00:00:00.000Z")
    assert len(auth0.users()) == 2500
    gap_users = {
        u["user_id"]: u
        for u in auth0.users()
        if u["created_at"] >= "2026-11-18T00:00:00.000Z"
        and not u.get("app_metadata", {}).get("signedUp")
    }
    assert len(gap_users) == 62  # the 60, "gap" and the one created at the cutoff exactly

    app = make_app(**management(auth0))
    auth0.clear_log()
    result = migrate(app)
    assert result.exit_code == 0, result.output
    assert table(result.output) == {"marked": 2438, "reported": 62, "already known": 0}
    assert "Auth0 (export)" in result.output
    assert any(r.path == "/api/v2/jobs/users-exports" for r in auth0.request_log)

    signup_state(app).sender.flush(timeout=30)
    events = signups(keen_signup_keen)
    assert sorted(e["userId"] for e in events) == sorted(gap_users)
    for event in events:
        assert event["backfilled"] is True
        assert event["keen"]["uniqueness_token"] == uniqueness_token("signups", event["userId"])
        created = gap_users[event["userId"]]["created_at"]
        assert event["keen"]["timestamp"][:19] == created[:19]
    assert exactly["user_id"] in gap_users  # "before" is strict

    # Day one: an old user, a gap user and a brand-new user log in.
    login(app.test_client(), auth0, "old@x.io")
    login(app.test_client(), auth0, "gap@x.io")
    login(app.test_client(), auth0, "brand-new@x.io", name="New")
    signup_state(app).sender.flush(timeout=30)
    events = signups(keen_signup_keen)
    assert len(events) == 63
    new = [e for e in events if e["userId"] not in gap_users]
    assert [e.get("name") for e in new] == ["New"] and "backfilled" not in new[0]
    assert not [e for e in events if e["userId"] == old["user_id"]]
    assert len([e for e in events if e["userId"] == gap["user_id"]]) == 1

    # A second run sends nothing.
    again = migrate(app)
    assert again.exit_code == 0, again.output
    assert table(again.output) == {"marked": 0, "reported": 0, "already known": 2501}
    signup_state(app).sender.flush(timeout=30)
    assert len(signups(keen_signup_keen)) == 63


def test_dry_run_writes_nothing_and_prints_the_same_table(
    make_app: t.Callable[..., Flask],
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
    tmp_path: t.Any,
) -> None:
    keen_signup_auth0.add_user(email="a@x.io", created_at="2020-01-01T00:00:00.000Z")
    keen_signup_auth0.add_user(
        email="b@x.io", created_at="2026-11-20T00:00:00.000Z", app_metadata={"signedUp": True}
    )
    keen_signup_auth0.add_user(email="c@x.io", created_at="2026-11-21T00:00:00.000Z")
    # The app's file existed before this process (a dry run on the host where it runs).
    (tmp_path / "migrate.sqlite3").touch(mode=0o600)
    app = make_app(**management(keen_signup_auth0))
    signup_state(app).outbox.pending_count()  # the schema exists: compare rows
    before = ledger_rows(app)
    dry = migrate(app, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "dry run, nothing written" in dry.output
    assert ledger_rows(app) == before == (0, 0)
    signup_state(app).sender.flush(timeout=5)
    assert signups(keen_signup_keen) == []
    real = migrate(app)
    assert table(real.output) == table(dry.output) == {
        "marked": 2,
        "reported": 1,
        "already known": 0,
    }
    assert ledger_rows(app) == (3, 1)


def _export_records() -> list[dict[str, t.Any]]:
    return [
        {"user_id": "auth0|old", "created_at": "2021-01-01T00:00:00.000Z", "name": "Old"},
        {
            "user_id": "auth0|rule",
            "created_at": "2026-11-19T00:00:00.000Z",
            "name": "Rule",
            "app_metadata": {"signedUp": True},
        },
        {"user_id": "google-oauth2|gap", "created_at": "2026-11-25T08:30:00.000Z", "name": "=Gap"},
        # No created_at, but the Rule marked them: marked (the marker decides).
        {"user_id": "auth0|nodate", "name": "No date", "app_metadata": {"signedUp": True}},
        {"name": "no id"},
    ]


def _write_ndjson_gz(path: t.Any) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for record in _export_records():
            out.write(json.dumps(record) + "\n")


def _write_csv(path: t.Any) -> None:
    """Auth0's CSV export: one column per field, strings escaped with a leading quote."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["user_id", "created_at", "name", "app_metadata.signedUp"])
    for record in _export_records():
        marked = record.get("app_metadata", {}).get("signedUp")
        writer.writerow(
            [
                "'" + record["user_id"] if "user_id" in record else "",
                record.get("created_at", ""),
                "'" + record["name"],
                "true" if marked else "",
            ]
        )
    path.write_text(buffer.getvalue(), encoding="utf-8")


@pytest.mark.parametrize("kind", ["ndjson.gz", "csv"])
def test_users_files_from_auth0s_export(
    kind: str,
    make_app: t.Callable[..., Flask],
    keen_signup_keen: KeenEmulator,
    tmp_path: t.Any,
) -> None:
    path = tmp_path / f"users.{kind}"
    (_write_ndjson_gz if kind == "ndjson.gz" else _write_csv)(path)
    app = make_app()  # no Management API credentials: the file is enough
    result = migrate(app, "--users-file", str(path))
    assert result.exit_code == 0, result.output
    assert table(result.output) == {
        "marked": 3,
        "reported": 1,
        "already known": 0,
        "no user_id (skipped)": 1,
    }
    signup_state(app).sender.flush(timeout=30)
    (event,) = signups(keen_signup_keen)
    assert event["userId"] == "google-oauth2|gap"
    assert event["name"] == "=Gap"  # the CSV escape is undone, the value kept
    assert event["connection"] == "google-oauth2"
    assert event["keen"]["timestamp"].startswith("2026-11-25T08:30:00")
    signup = signup_state(app)
    with app.test_request_context():
        for sub in ("auth0|old", "auth0|rule", "google-oauth2|gap", "auth0|nodate"):
            outcome = signup.tracker.track_claims({"sub": sub}, ip=None, user_agent=None)
            assert outcome.value == "returning", sub


def test_a_bad_line_stops_the_run_before_anything_is_written(
    make_app: t.Callable[..., Flask], keen_signup_keen: KeenEmulator, tmp_path: t.Any
) -> None:
    """Before: the chunks before the bad line were committed, and the rest waited for a
    rerun. Now the file is checked to the end first: nothing is written."""
    gap = [
        {"user_id": f"auth0|gap{i}", "created_at": f"2026-11-2{i % 9}T00:00:00.000Z"}
        for i in range(4500)
    ]
    path = tmp_path / "users.ndjson"
    lines = [json.dumps(record) for record in gap]
    broken = lines[:3000] + ["{not json"] + lines[3000:]
    path.write_text("\n".join(broken) + "\n")
    app = make_app()
    first = migrate(app, "--users-file", str(path), "--flush-timeout", "0")
    assert first.exit_code == 1
    assert "migrate stopped: line 3001 of the users export is not valid JSON" in first.output
    assert "stopped: nothing written" in first.output
    assert ledger_rows(app) == (0, 0)

    path.write_text("\n".join(lines[:3000]) + "\n")  # a run on part of the users...
    assert table(migrate(app, "--users-file", str(path)).output)["reported"] == 3000
    path.write_text("\n".join(lines) + "\n")  # ...then on all of them: nobody twice
    second = migrate(app, "--users-file", str(path))
    assert second.exit_code == 0, second.output
    rows = table(second.output)
    assert rows["reported"] == 1500 and rows["already known"] == 3000
    signup_state(app).sender.flush(timeout=60)
    user_ids = [e["userId"] for e in signups(keen_signup_keen)]
    assert len(user_ids) == len(set(user_ids)) == 4500


def test_an_auth0_error_stops_with_its_message_and_a_non_zero_status(
    make_app: t.Callable[..., Flask], keen_signup_auth0: Auth0Emulator
) -> None:
    config = management(keen_signup_auth0)
    config["KEEN_SIGNUP_AUTH0_CLIENT_SECRET"] = "not-the-secret"
    app = make_app(**config)
    result = migrate(app)
    assert result.exit_code != 0
    assert "migrate stopped: Auth0 answered 401" in result.output
    assert "not-the-secret" not in result.output


def test_without_credentials_or_file_it_says_how_to_provide_users(
    make_app: t.Callable[..., Flask],
) -> None:
    result = migrate(make_app())
    assert result.exit_code != 0
    assert "KEEN_SIGNUP_AUTH0_DOMAIN" in result.output and "--users-file" in result.output


def test_set_app_metadata_marks_users_in_auth0_when_asked(
    make_app: t.Callable[..., Flask], keen_signup_auth0: Auth0Emulator
) -> None:
    old = keen_signup_auth0.add_user(email="o@x.io", created_at="2020-01-01T00:00:00.000Z")
    app = make_app(**management(keen_signup_auth0))
    assert migrate(app).exit_code == 0
    assert not keen_signup_auth0.get_user(old["user_id"]).get("app_metadata", {}).get("signedUp")
    # Marked locally already: only users newly marked are patched, so start afresh.
    app2_config = management(keen_signup_auth0)
    app2 = make_app(**app2_config, KEEN_SIGNUP_COLLECTION="signups2")
    result = migrate(app2, "--set-app-metadata")
    assert result.exit_code == 0, result.output
    user = keen_signup_auth0.get_user(old["user_id"])
    assert user is not None and user["app_metadata"]["signedUp"] is True


@pytest.mark.parametrize("store", ["auth0", "session"])
def test_other_stores_mark_in_the_ledger_beside_the_outbox(
    store: str,
    make_app: t.Callable[..., Flask],
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
) -> None:
    """auth0: the local ledger in front of app_metadata makes a marked user returning on
    this host. session: the gap is still reported once (docs: SINCE protects old users)."""
    keen_signup_auth0.add_user(email="old@x.io", created_at="2020-01-01T00:00:00.000Z")
    keen_signup_auth0.add_user(email="gap@x.io", name="Gap", created_at="2026-11-21T00:00:00Z")
    app = make_app(KEEN_SIGNUP_STORE=store, **management(keen_signup_auth0))
    result = migrate(app)
    assert result.exit_code == 0, result.output
    assert table(result.output) == {"marked": 1, "reported": 1, "already known": 0}
    assert signup_state(app).sender.flush(timeout=30) == 0
    assert [e["name"] for e in signups(keen_signup_keen)] == ["Gap"]
    if store == "auth0":
        login(app.test_client(), keen_signup_auth0, "old@x.io")
        login(app.test_client(), keen_signup_auth0, "gap@x.io")
        assert signup_state(app).sender.flush(timeout=30) == 0
        assert len(signups(keen_signup_keen)) == 1


APP_MODULE = """
from flask import Flask
from flask_keen_signup import KeenSignup

app = Flask(__name__)
app.config.update(
    KEEN_PROJECT_ID="p",
    KEEN_WRITE_KEY="w",
    KEEN_API_URL="http://127.0.0.1:9",
    KEEN_SIGNUP_DATABASE={database!r},
    KEEN_SIGNUP_SHUTDOWN_TIMEOUT=0,
)
KeenSignup(app)
"""


def test_a_progress_bar_on_a_terminal(tmp_path: t.Any) -> None:
    """Run as a person would, in a terminal: stderr is a pty, the bar is drawn there."""
    import os
    import pty
    import subprocess
    import sys

    (tmp_path / "terminal_app.py").write_text(
        APP_MODULE.format(database=str(tmp_path / "t.sqlite3"))
    )
    users = tmp_path / "users.ndjson"
    users.write_text(
        "".join(
            json.dumps({"user_id": f"auth0|{n}", "created_at": "2020-01-01T00:00:00Z"}) + "\n"
            for n in range(5000)
        )
    )
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "terminal_app", "keen-signup", "migrate",
             "--reported-until", CUTOFF, "--users-file", str(users), "--flush-timeout", "0"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
        )
        os.close(follower)
        follower = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the pty is closed once the child and we let go of it
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert done.returncode == 0, drawn.decode(errors="replace")
    assert b"Migrating users" in drawn and b"100%" in drawn
    assert table(done.stdout.decode())["marked"] == 5000


def test_a_forgotten_user_stays_known_to_migrate(
    make_app: t.Callable[..., Flask], keen_signup_keen: KeenEmulator, tmp_path: t.Any
) -> None:
    """`forget` keeps the marker as a hash of the id; migrate must not report them again."""
    path = tmp_path / "users.ndjson"
    path.write_text(json.dumps({"user_id": "auth0|gone", "created_at": "2026-11-25T00:00:00Z"}))
    app = make_app()
    assert table(migrate(app, "--users-file", str(path)).output)["reported"] == 1
    assert signup_state(app).sender.flush(timeout=30) == 0
    forgot = app.test_cli_runner().invoke(args=["keen-signup", "forget", "auth0|gone"])
    assert forgot.exit_code == 0, forgot.output
    again = migrate(app, "--users-file", str(path))
    assert table(again.output) == {"marked": 0, "reported": 0, "already known": 1}
    assert len(signups(keen_signup_keen)) == 1


# -- bad input is refused before anything is written (issue 16) ---------------------------


def _gap_users(count: int) -> list[dict[str, t.Any]]:
    """Users who signed up after the cutoff: every one of them must be reported once."""
    return [
        {
            "user_id": f"auth0|i{n}",
            "created_at": f"2026-11-{19 + n % 10:02d}T{n % 24:02d}:00:00.000Z",
            "name": f"User {n}",
        }
        for n in range(count)
    ]


def _refused(result: t.Any, line: int | None, app: Flask) -> str:
    """The run failed with a clear message (no traceback) and wrote nothing."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # click's error, not a crash
    assert "Traceback" not in result.output
    if line is not None:
        assert f"line {line} of the users" in result.output
    assert "stopped: nothing written" in result.output
    assert ledger_rows(app) == (0, 0)
    return str(result.output)


@pytest.mark.parametrize("where", ["data", "checksum"])
def test_a_flipped_byte_in_a_gzipped_file_marks_nobody(
    where: str,
    make_app: t.Callable[..., Flask],
    keen_signup_keen: KeenEmulator,
    tmp_path: t.Any,
) -> None:
    """5,000 users, one byte flipped. Before: the chunks decoded before gzip's checksum
    failed (at the very end) were committed, mangled users included, and never reported,
    even after a rerun with the intact file. Now nothing is written, and the rerun reports
    every user exactly once."""
    users = _gap_users(5000)
    intact = gzip.compress(("\n".join(json.dumps(u) for u in users) + "\n").encode())
    flipped = bytearray(intact)
    # In the data: deflate still decodes (into mangled lines); in the trailer's CRC32:
    # every line decodes intact. Either way only the checksum at the end says so.
    flipped[len(intact) // 2 if where == "data" else len(intact) - 6] ^= 0x10
    with pytest.raises(gzip.BadGzipFile, match="CRC check failed"):
        gzip.decompress(bytes(flipped))
    path = tmp_path / "users.ndjson.gz"
    path.write_bytes(bytes(flipped))
    app = make_app()
    output = _refused(migrate(app, "--users-file", str(path), "--flush-timeout", "0"), None, app)
    assert "migrate stopped:" in output

    path.write_bytes(intact)
    rerun = migrate(app, "--users-file", str(path), "--flush-timeout", "0")
    assert rerun.exit_code == 0, rerun.output
    assert table(rerun.output) == {"marked": 0, "reported": 5000, "already known": 0}
    assert signup_state(app).sender.flush(timeout=120) == 0
    user_ids = sorted(e["userId"] for e in signups(keen_signup_keen))
    assert user_ids == sorted(u["user_id"] for u in users)  # each exactly once


def test_a_bad_byte_in_a_csv_is_named_by_its_physical_line(
    make_app: t.Callable[..., Flask], tmp_path: t.Any
) -> None:
    """Before: reported as line 115. Records that span lines (a newline in a quoted
    name) are counted as the lines they take."""
    rows = [b"user_id,created_at,name"]
    for number in range(1, 400):
        name = f"User\n{number}" if number % 40 == 0 else f"User {number}"
        rows.append(f'"\'auth0|{number}",2026-11-20T00:00:00.000Z,"\'{name}"'.encode())
    lines = b"\n".join(rows).split(b"\n")
    assert lines[200].count(b"User") == 1
    lines[200] = lines[200].replace(b"User", b"User \xe9")  # Latin-1, on physical line 201
    path = tmp_path / "users.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    app = make_app()
    output = _refused(migrate(app, "--users-file", str(path)), 201, app)
    assert "line 201 of the users export is not valid UTF-8" in output


def test_a_lone_surrogate_is_a_clear_error(
    make_app: t.Callable[..., Flask], tmp_path: t.Any
) -> None:
    """Before: an uncaught UnicodeEncodeError traceback."""
    records = [json.dumps(u) for u in _gap_users(3)]
    records.insert(2, '{"user_id": "auth0|x\\udc00", "created_at": "2026-11-20T00:00:00Z"}')
    path = tmp_path / "users.ndjson"
    path.write_text("\n".join(records) + "\n")
    app = make_app()
    output = _refused(migrate(app, "--users-file", str(path)), 3, app)
    assert "surrogate" in output


def test_a_10000_character_user_id_is_a_clear_error(
    make_app: t.Callable[..., Flask], tmp_path: t.Any
) -> None:
    """Before: every rerun stopped at the same record with no line number."""
    users = _gap_users(2500)
    users[2100]["user_id"] = "auth0|" + "x" * 10_000
    path = tmp_path / "users.ndjson"
    path.write_text("".join(json.dumps(u) + "\n" for u in users))
    app = make_app()
    output = _refused(migrate(app, "--users-file", str(path)), 2101, app)
    assert "user_id is longer than Keen's 9999 chars" in output


@pytest.mark.parametrize(
    ("created_at", "problem"),
    [
        ("2026-13-45T00:00:00Z", "created_at is not a valid date and time"),
        ("2026-02-30", "created_at is not a valid date and time"),
        ("yesterday", "created_at is not a valid date and time"),
        ("2026-11-20T25:61:00Z", "created_at is not a valid date and time"),
        ("9999-12-31T23:59:59Z", "created_at is in the future"),
        ("", "has no created_at"),
    ],
)
@pytest.mark.parametrize("kind", ["ndjson", "csv"])
def test_impossible_future_and_missing_dates_are_errors_with_their_line(
    created_at: str,
    problem: str,
    kind: str,
    make_app: t.Callable[..., Flask],
    tmp_path: t.Any,
) -> None:
    """Before: treated as missing, the user silently marked and never reported, exit 0
    (and 9999-12-31 was sent as the event's time)."""
    users: list[dict[str, t.Any]] = _gap_users(2300)
    users[2203]["created_at"] = created_at  # the second chunk: the first is not written
    path = tmp_path / f"users.{kind}"
    if kind == "ndjson":
        path.write_text("".join(json.dumps(u) + "\n" for u in users))
        line = 2204
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["user_id", "created_at", "name"])
        for number, user in enumerate(users):
            name = "Two\nlines" if number == 7 else user["name"]  # one record, two lines
            writer.writerow(["'" + user["user_id"], user["created_at"], "'" + name])
        path.write_text(buffer.getvalue())
        line = 2204 + 2  # the header, and the record that spans two lines
    app = make_app()
    output = _refused(migrate(app, "--users-file", str(path)), line, app)
    assert f"line {line} of the users file: {problem}" in output


def test_a_dry_run_leaves_no_file_behind(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, tmp_path: t.Any
) -> None:
    """Before: the dry run created the app's SQLite file (and its directory): init_app
    opens it to check the path. A dry run removes what it created, as it was."""
    users = tmp_path / "users.ndjson"
    users.write_text("".join(json.dumps(u) + "\n" for u in _gap_users(3)))
    database = tmp_path / "instance" / "keen_signup.sqlite3"
    for bad in (False, True):
        app, _ = quickstart_app(keen_signup_auth0, keen_signup_keen, str(database))
        try:
            if bad:
                users.write_text('{"user_id": "auth0|a", "created_at": "yesterday"}\n')
            result = migrate(app, "--users-file", str(users), "--dry-run")
            assert result.exit_code == (1 if bad else 0), result.output
            if not bad:
                assert table(result.output) == {"marked": 0, "reported": 3, "already known": 0}
            assert list(tmp_path.iterdir()) == [users]
        finally:
            signup_state(app).sender.shutdown(timeout=5)
    # A real run afterwards creates the file and writes to it.
    app, _ = quickstart_app(keen_signup_auth0, keen_signup_keen, str(database))
    try:
        users.write_text("".join(json.dumps(u) + "\n" for u in _gap_users(3)))
        assert migrate(app, "--users-file", str(users), "--flush-timeout", "0").exit_code == 0
        assert ledger_rows(app) == (3, 3)
    finally:
        signup_state(app).sender.shutdown(timeout=5)
