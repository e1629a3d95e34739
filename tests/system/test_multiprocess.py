"""The guarantees across real processes, through the extension (not the sender alone).

* ``gunicorn --preload -w 4`` serving ``tests/mp_app.py`` (Auth0's quickstart plus the two
  lines) against one SQLite file, with both emulators running in the pytest process:
  distinct signups from concurrent browsers are delivered exactly once whichever worker
  served them; concurrent *first* logins of one new user are claimed, queued and sent once;
  SIGTERM to the master ends everything within a bound and loses nothing (what Keen could
  not take is delivered by the next start, without waiting for a request).
* ``kill -9`` of the app process at stepped, seeded-jittered moments while browsers sign up
  through the real login flow and deliveries are in flight (Keen is slow): after each kill
  the app restarts on the same database and keeps delivering; at the end every signup
  whose callback answered is in Keen exactly once, and so is every signup SQLite committed.

``tests/system/test_crash_recovery.py`` covers deterministic crash points inside the sender; this
file is about the app as deployed: real servers, real HTTP on 127.0.0.1, real SQLite files.
Every wait is bounded.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor

import _paths
import pytest
import requests
from _paths import TESTS

from flask_keen_signup.events import uniqueness_token
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

pytestmark = pytest.mark.slow

ROOT = _paths.ROOT
APP_SOURCE = os.path.join(TESTS, "mp_app.py")
PASSWORD = "correct horse battery staple"
HTTP_TIMEOUT = 15


# -- helpers ---------------------------------------------------------------------------------


def require_gunicorn() -> None:
    """Skip without gunicorn locally; on CI a missing gunicorn is a failure."""
    if importlib.util.find_spec("gunicorn") is not None:
        return
    if os.environ.get("CI", "").strip().lower() in ("true", "1"):
        pytest.fail("gunicorn is not installed, and CI=true: these tests must run on CI")
    pytest.skip("gunicorn is not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: t.Callable[[], t.Any],
    timeout: float,
    what: str,
    server: Server | None = None,
) -> t.Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s
    (with the stacks of ``server``'s threads, if given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = server.dump_stacks() if server is not None else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(0.05)


def tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def app_env(auth0: Auth0Emulator, keen: KeenEmulator, database: str, **keys: str) -> dict[str, str]:
    """The environment of the app process: its secrets and the ``FLASK_KEEN_*`` keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "KEEN_"))}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "APP_SECRET_KEY": "multiprocess-test-secret",
            "AUTH0_CLIENT_ID": auth0.client_id,
            "AUTH0_CLIENT_SECRET": auth0.client_secret,
            "AUTH0_METADATA_URL": auth0.server_metadata_url,
            "FLASK_KEEN_PROJECT_ID": keen.project_id,
            "FLASK_KEEN_WRITE_KEY": keen.write_key,
            "FLASK_KEEN_API_URL": keen.url,
            "FLASK_KEEN_SIGNUP_DATABASE": database,
            "FLASK_KEEN_SIGNUP_FLUSH_INTERVAL": "0.05",
            "FLASK_KEEN_SIGNUP_SHUTDOWN_TIMEOUT": "3",
        }
    )
    env.update({f"FLASK_{key}": value for key, value in keys.items()})
    return env


class Server:
    """One app server process (gunicorn master or werkzeug), its port and its log."""

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str], port: int, log: str):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def why(self, lines: int = 40) -> str:
        return f"exit status {self.proc.poll()}; log:\n{tail(self.log, lines)}"

    def wait_ready(self, timeout: float = 30) -> int:
        """Wait until ``/healthz`` answers; return the pid that answered."""

        def probe() -> int | None:
            if self.proc.poll() is not None:
                pytest.fail(f"the app server died while starting: {self.why()}")
            try:
                answer = requests.get(self.url + "/healthz", timeout=2)
            except requests.RequestException:
                return None
            return int(answer.json()["pid"]) if answer.status_code == 200 else None

        return int(wait_for(probe, timeout, f"the app on {self.url} to answer"))

    def dump_stacks(self) -> str:
        """Every thread's stack (``faulthandler`` on SIGUSR1 in ``mp_app``), and the log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
        return f"\n{self.why(150)}"

    def terminate(self, timeout: float) -> int:
        """SIGTERM; the process must exit within ``timeout`` seconds. Returns its status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running {timeout}s after SIGTERM; log:\n{tail(self.log)}")

    def kill(self) -> None:
        """SIGKILL and reap (a zombie would still look alive to the next process)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def gunicorn(tmp_path: t.Any, env: dict[str, str], *, workers: int = 4) -> Server:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--preload",
        "-w",
        str(workers),
        "-b",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "10",
        "--timeout",
        "60",
        "--log-level",
        "info",
        "mp_app:app",
    ]
    return Server(argv, str(tmp_path), env, port, str(tmp_path / "gunicorn.log"))


def werkzeug(tmp_path: t.Any, env: dict[str, str], log: str) -> Server:
    port = free_port()
    argv = [sys.executable, "mp_app.py", str(port)]
    return Server(argv, str(tmp_path), env, port, log)


@contextlib.contextmanager
def stopped_at_exit(server: Server) -> t.Iterator[Server]:
    """Never leave a server behind, whatever the test did."""
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


def install_app(tmp_path: t.Any) -> None:
    shutil.copy(APP_SOURCE, tmp_path / "mp_app.py")


class Browser:
    """One browser: its own cookie jar for the app. The Auth0 step is posted without the
    app's cookies (both servers are on 127.0.0.1, and cookies ignore ports)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = requests.Session()
        self.callback_url: str | None = None

    def close(self) -> None:
        self.session.close()

    def authorize(self, email: str, name: str | None = None) -> None:
        """``/login`` then the emulator's form: ready to call back."""
        start = self.session.get(self.base + "/login", allow_redirects=False, timeout=HTTP_TIMEOUT)
        assert start.status_code == 302, start.text[:300]
        form = {"email": email, "password": PASSWORD}
        if name:
            form["name"] = name
        answer = requests.post(
            start.headers["Location"], data=form, allow_redirects=False, timeout=HTTP_TIMEOUT
        )
        assert answer.status_code == 302, answer.text[:300]
        self.callback_url = answer.headers["Location"]

    def call_back(self) -> requests.Response:
        assert self.callback_url is not None
        return self.session.get(self.callback_url, allow_redirects=False, timeout=HTTP_TIMEOUT)

    def sign_up(self, email: str) -> requests.Response:
        self.authorize(email)
        return self.call_back()


def sign_up(base: str, email: str) -> tuple[int, str, int]:
    """A whole login in a new browser: (status, Location, pid of the callback's worker)."""
    browser = Browser(base)
    try:
        response = browser.sign_up(email)
    finally:
        browser.close()
    return (
        response.status_code,
        response.headers.get("Location", ""),
        int(response.headers["X-Worker-Pid"]),
    )


def db_rows(path: str, sql: str, params: t.Sequence[t.Any] = ()) -> list[tuple[t.Any, ...]]:
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
        return conn.execute(sql, params).fetchall()


def has_tables(path: str, *names: str) -> bool:
    """True when the SQLite file at ``path`` exists and holds every table in ``names``."""
    if not os.path.exists(path):
        return False
    found = {r[0] for r in db_rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    return set(names) <= found


def outbox_states(path: str) -> collections.Counter[str]:
    return collections.Counter(r[0] for r in db_rows(path, "SELECT state FROM keen_signup_outbox"))


def pending(path: str) -> int:
    states = outbox_states(path)
    return states["pending"] + states["confirming"]


def user_ids_by_email(auth0: Auth0Emulator) -> dict[str, str]:
    return {u["email"]: u["user_id"] for u in auth0.users()}


def keen_user_counts(keen: KeenEmulator) -> collections.Counter[str]:
    return collections.Counter(e["userId"] for e in keen.events("signups"))


def token_sends(keen: KeenEmulator, user_id: str) -> int:
    """How many times the user's event went over the wire (its token in POST bodies)."""
    token = uniqueness_token("signups", user_id).encode()
    return sum(r.body.count(token) for r in keen.request_log if r.method == "POST")


@pytest.fixture
def auth0() -> t.Iterator[Auth0Emulator]:
    with Auth0Emulator() as emulator:
        yield emulator


@pytest.fixture
def keen() -> t.Iterator[KeenEmulator]:
    with KeenEmulator(request_log_limit=None) as emulator:
        yield emulator


# -- gunicorn --preload -w 4, one SQLite file ------------------------------------------------


def test_gunicorn_preload_4_workers_distinct_users_each_delivered_once(
    tmp_path: t.Any, auth0: Auth0Emulator, keen: KeenEmulator
) -> None:
    require_gunicorn()
    install_app(tmp_path)
    database = str(tmp_path / "keen_signup.sqlite3")
    emails = [f"user{n}@example.com" for n in range(20)]
    with stopped_at_exit(gunicorn(tmp_path, app_env(auth0, keen, database))) as server:
        master = server.proc.pid
        server.wait_ready()
        with ThreadPoolExecutor(max_workers=len(emails)) as pool:
            results = list(pool.map(lambda email: sign_up(server.url, email), emails))

        assert [(status, location) for status, location, _ in results] == [(302, "/")] * 20
        pids = {pid for _, _, pid in results}
        assert master not in pids, "the master must not serve requests"
        assert len(pids) >= 2, f"all callbacks were served by one worker: {pids}"

        ids = user_ids_by_email(auth0)
        expected = {ids[email] for email in emails}
        wait_for(lambda: set(keen_user_counts(keen)) >= expected, 30, "20 events in Keen")
        wait_for(lambda: pending(database) == 0, 30, "an empty outbox")
        assert server.terminate(30) == 0, server.why()

    counts = keen_user_counts(keen)
    assert set(counts) == expected
    assert set(counts.values()) == {1}
    assert {uid: token_sends(keen, uid) for uid in expected} == dict.fromkeys(expected, 1)
    assert keen.duplicates_rejected == 0
    assert outbox_states(database) == {"delivered": 20}
    markers = db_rows(database, "SELECT user_id, state FROM keen_signup_markers")
    assert sorted(markers) == sorted((uid, "confirmed") for uid in expected)
    print(f"\n20 signups served by workers {sorted(pids)} (master {master})")


def test_gunicorn_concurrent_first_logins_of_one_user_are_claimed_and_sent_once(
    tmp_path: t.Any, auth0: Auth0Emulator, keen: KeenEmulator
) -> None:
    require_gunicorn()
    install_app(tmp_path)
    database = str(tmp_path / "keen_signup.sqlite3")
    sessions = 8
    with stopped_at_exit(gunicorn(tmp_path, app_env(auth0, keen, database))) as server:
        server.wait_ready()
        browsers = [Browser(server.url) for _ in range(sessions)]
        try:
            # Every browser gets an authorization code for the same email (the emulator
            # creates the user at the first form post, then logs the others in) ...
            for browser in browsers:
                browser.authorize("same@example.com", name="Same")
            assert len(auth0.users()) == 1
            # ... then all call back at once: 8 first logins of a new user, 4 processes.
            barrier = threading.Barrier(sessions)

            def call_back(browser: Browser) -> requests.Response:
                barrier.wait(timeout=30)
                return browser.call_back()

            with ThreadPoolExecutor(max_workers=sessions) as pool:
                responses = list(pool.map(call_back, browsers))
        finally:
            for browser in browsers:
                browser.close()

        assert [(r.status_code, r.headers.get("Location")) for r in responses] == [
            (302, "/")
        ] * sessions
        pids = {int(r.headers["X-Worker-Pid"]) for r in responses}
        assert len(pids) >= 2, f"the callbacks did not race across processes: {pids}"
        user_id = auth0.users()[0]["user_id"]
        wait_for(lambda: keen_user_counts(keen)[user_id], 30, "the event in Keen")
        wait_for(lambda: pending(database) == 0, 30, "an empty outbox")
        assert server.terminate(30) == 0, server.why()

    assert keen_user_counts(keen) == {user_id: 1}
    # The SQLite claim is atomic across processes: one marker, one queued row, one send.
    assert db_rows(database, "SELECT user_id, state FROM keen_signup_markers") == [
        (user_id, "confirmed")
    ]
    assert db_rows(database, "SELECT user_id, state FROM keen_signup_outbox") == [
        (user_id, "delivered")
    ]
    assert token_sends(keen, user_id) == 1, "the extension sent the event more than once"
    assert keen.duplicates_rejected == 0
    print(f"\n{sessions} concurrent first logins served by workers {sorted(pids)}: 1 event")


def test_gunicorn_sigterm_is_bounded_and_what_keen_missed_goes_out_at_the_next_start(
    tmp_path: t.Any, auth0: Auth0Emulator, keen: KeenEmulator
) -> None:
    require_gunicorn()
    install_app(tmp_path)
    database = str(tmp_path / "keen_signup.sqlite3")
    env = app_env(auth0, keen, database)
    first = [f"early{n}@example.com" for n in range(5)]
    slow = [f"slow{n}@example.com" for n in range(6)]

    # 1. SIGTERM right after the signups: the exit flush delivers whatever is queued.
    with stopped_at_exit(gunicorn(tmp_path, env)) as server:
        server.wait_ready()
        with ThreadPoolExecutor(max_workers=5) as pool:
            results = list(pool.map(lambda email: sign_up(server.url, email), first))
        assert server.terminate(45) == 0, server.why()  # graceful 10 s + flushes of 3 s
    assert pending(database) == 0
    assert len(keen_user_counts(keen)) == 5

    # 2. Keen is slow (answers after 30 s, so nothing fails and nothing backs off): the
    # logins still succeed at once; the events are in flight when the master gets SIGTERM.
    keen.add_latency(30)
    with stopped_at_exit(gunicorn(tmp_path, env)) as server:
        server.wait_ready()
        with ThreadPoolExecutor(max_workers=6) as pool:
            results += list(pool.map(lambda email: sign_up(server.url, email), slow))
        wait_for(
            lambda: (
                db_rows(
                    database,
                    "SELECT COUNT(*) FROM keen_signup_outbox WHERE lease_owner IS NOT NULL",
                )
                == [(6,)]
            ),
            15,
            "the 6 events to be in flight",
        )
        status = server.terminate(45)
        assert status == 0, server.why()
    assert [(code, location) for code, location, _ in results] == [(302, "/")] * 11
    workers = {pid for _, _, pid in results}

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        return False

    wait_for(lambda: all(gone(pid) for pid in workers), 15, "every worker to be gone")
    assert pending(database) == 6, "the events Keen had not answered are still queued"
    assert db_rows(database, "SELECT COUNT(*) FROM keen_signup_dead_letters") == [(0,)]

    # 3. Keen recovers (the requests it was sitting on are answered to dead sockets and
    # stored); the next start takes over the dead processes' leases and re-sends without
    # waiting for a request; Keen's uniqueness token absorbs the copies.
    keen.clear_faults()
    with stopped_at_exit(gunicorn(tmp_path, env)) as server:
        wait_for(lambda: pending(database) == 0, 30, "the restart to deliver the backlog")
        server.wait_ready()
        assert server.terminate(45) == 0, server.why()

    ids = user_ids_by_email(auth0)
    expected = {ids[email] for email in first + slow}
    counts = keen_user_counts(keen)
    assert set(counts) == expected and set(counts.values()) == {1}
    resends = sum(token_sends(keen, uid) - 1 for uid in expected)
    assert keen.duplicates_rejected == resends
    assert outbox_states(database) == {"delivered": 11}
    print(f"\nSIGTERM with 6 events in flight: {keen.duplicates_rejected} duplicates absorbed")


# -- one SQLite file, many processes: POSIX locks ---------------------------------------------

PEEK = (
    "import sys\n"
    "from flask_keen_signup.database import Database\n"
    "from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox\n"
    "print(SQLiteOutbox(Database(sys.argv[1])).pending_count())\n"
)


def test_a_signup_committed_after_another_process_closed_the_file_is_not_lost(
    tmp_path: t.Any,
) -> None:
    """A new thread's connection (each werkzeug request, each sender helper) must not drop
    this process's SQLite locks: if it does, another process that opens and closes the
    file (``flask keen-signup status``, a gunicorn worker exiting) believes it is the last
    user, checkpoints and deletes the WAL, and this process's next commits go to an
    unlinked WAL: accepted signups invisible to every other process and lost at exit.
    Found by the kill -9 test below (the sender then failed with 'disk I/O error')."""
    from flask_keen_signup.database import Database
    from flask_keen_signup.delivery import QueuedEvent
    from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox

    path = str(tmp_path / "keen_signup.sqlite3")
    outbox = SQLiteOutbox(Database(path))

    def event(user_id: str) -> QueuedEvent:
        token = uniqueness_token("signups", user_id)
        return QueuedEvent("signups", user_id, token, {"userId": user_id})

    def peek() -> int:
        env = {**os.environ, "PYTHONPATH": ROOT}
        out = subprocess.run(
            [sys.executable, "-c", PEEK, path], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    outbox.enqueue(event("auth0|first"))  # this thread's connection is open from here on
    helper = threading.Thread(target=outbox.pending_count)  # a request thread connects
    helper.start()
    helper.join(30)
    assert peek() == 1  # another process opens, reads and closes the file
    outbox.enqueue(event("auth0|second"))  # the next signup, committed in this process
    assert outbox.pending_count() == 2
    assert peek() == 2, "a committed signup is invisible to other processes (unlinked WAL)"
    outbox.close()
    assert peek() == 2


FORK_SCRIPT = """
import json, os, sys, threading, time
import flask_keen_signup.database as database_module
database_module.BUSY_TIMEOUT_MS = 3000  # fail in 3 s rather than 10
from flask import Flask
from flask_keen_signup import KeenSignup
from flask_keen_signup import signup_state

app = Flask(__name__)
app.config.update(
    KEEN_PROJECT_ID="demo-project", KEEN_WRITE_KEY="demo-write-key", KEEN_API_URL=sys.argv[2],
    KEEN_SIGNUP_DATABASE=sys.argv[1], KEEN_SIGNUP_PROPAGATE_ERRORS=False,
    KEEN_SIGNUP_SHUTDOWN_TIMEOUT=1,
)
signup = KeenSignup(app)  # the preloaded app: its sender runs in this "master"
state = signup_state(app)
inside = threading.Event()

def master_sender_at_work():  # what the master's sender does at each claim or mark
    with state.database.transaction() as conn:
        conn.execute("SELECT COUNT(*) FROM keen_signup_outbox").fetchall()
        inside.set()
        time.sleep(0.3)

busy = threading.Thread(target=master_sender_at_work)
busy.start()
inside.wait(10)
pid = os.fork()  # gunicorn spawning a worker
if pid == 0:
    import faulthandler
    faulthandler.dump_traceback_later(10, exit=True)  # a deadlocked child exits, with stacks
    started = time.monotonic()
    with app.test_request_context():
        outcome = signup.track_claims({"sub": "auth0|forked", "name": "Worker"})
    print(json.dumps({"outcome": getattr(outcome, "value", outcome),
                      "seconds": round(time.monotonic() - started, 2)}), flush=True)
    os._exit(0)
busy.join()
os.waitpid(pid, 0)
"""


def test_a_worker_forked_while_the_master_writes_can_record_signups(
    tmp_path: t.Any, keen: KeenEmulator
) -> None:
    """``gunicorn --preload``: the master's sender thread may be inside a SQLite transaction
    at the moment a worker is forked. SQLite's per-process lock bookkeeping is copied into
    the child, which then believes the write lock is held by itself, forever: every write
    of that worker fails with 'database is locked' and its signups are not recorded (seen
    in the gunicorn tests as workers' "signup tracking failed" and 10 s exits). If the
    master's thread was inside ``sqlite3.connect`` instead, the child deadlocks there."""
    path = str(tmp_path / "keen_signup.sqlite3")
    script = tmp_path / "fork_child.py"
    script.write_text(FORK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(
        [sys.executable, str(script), path, keen.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert result, done.stderr[-3000:]
    assert json.loads(result[-1])["outcome"] == "queued", (
        result[-1],
        done.stderr[-2000:],
    )
    rows = db_rows(path, "SELECT user_id FROM keen_signup_outbox")
    assert rows == [("auth0|forked",)]


# -- kill -9 at the app level -----------------------------------------------------------------

KILL_RUNS = 22
BROWSERS = 3
SEED = 20261118


def kill_delays(runs: int, seed: int) -> list[float]:
    """Seconds from spawn to SIGKILL: a step per run (so each run is a different point:
    during start-up and the delivery of the previous backlog, then while logins and
    deliveries overlap), jittered by a seeded draw, in a seeded order."""
    rng = random.Random(seed)
    delays = [0.15 + 0.07 * n + rng.uniform(-0.02, 0.02) for n in range(runs)]
    rng.shuffle(delays)
    return delays


def test_kill_9_of_the_app_at_many_points_then_restart_delivers_every_accepted_signup_once(
    tmp_path: t.Any, auth0: Auth0Emulator
) -> None:
    """Real login flow (not ``track_claims``): "accepted" then means exactly what the
    guarantee says, the callback's response reached the browser, and the kill lands
    anywhere in the real request path (Authlib's token exchange, the claim-and-enqueue
    transaction, the response) as well as in the sender's delivery."""
    install_app(tmp_path)
    database = str(tmp_path / "keen_signup.sqlite3")
    keen_file = str(tmp_path / "keen-emulator.sqlite3")
    accepted: list[str] = []
    lock = threading.Lock()
    report: list[str] = []

    def browse(base: str, prefix: str, stop: threading.Event) -> None:
        n = 0
        while not stop.is_set():
            email = f"{prefix}-{n}@example.com"
            n += 1
            browser = Browser(base)
            try:
                response = browser.sign_up(email)
                if response.status_code == 302 and response.headers.get("Location") == "/":
                    with lock:
                        accepted.append(email)
            except (requests.RequestException, AssertionError, KeyError):
                time.sleep(0.02)  # the server is starting or was just killed
            finally:
                browser.close()

    started = time.monotonic()
    with KeenEmulator(database=keen_file, request_log_limit=None) as keen:
        keen.add_latency(0.1)  # every Keen request is in flight for a while
        env = app_env(
            auth0,
            keen,
            database,
            KEEN_SIGNUP_BATCH_SIZE="4",
            KEEN_SIGNUP_FLUSH_INTERVAL="0.02",
        )
        for run, delay in enumerate(kill_delays(KILL_RUNS, SEED)):
            server = werkzeug(tmp_path, env, str(tmp_path / f"app-{run}.log"))
            stop = threading.Event()
            browsers = [
                threading.Thread(target=browse, args=(server.url, f"r{run}b{b}", stop))
                for b in range(BROWSERS)
            ]
            with stopped_at_exit(server):
                for thread in browsers:
                    thread.start()
                time.sleep(delay)
                alive = server.proc.poll() is None
                server.kill()
                stop.set()
                for thread in browsers:
                    thread.join(HTTP_TIMEOUT * 3 + 5)
                    assert not thread.is_alive()
            assert alive, f"run {run}: the app exited before the kill: {server.why()}"
            assert server.proc.returncode == -signal.SIGKILL
            if not has_tables(database, "keen_signup_markers", "keen_signup_outbox"):
                # The kill landed before the first start created the schema (a slow start
                # on a loaded machine): then no login can have been accepted yet.
                assert not accepted, f"run {run}: signups accepted, but no ledger on disk"
                report.append(f"run {run:2d}: kill at {delay:.2f}s, before the schema existed")
                continue
            # Claim and enqueue commit together: a marker without its queued event would be
            # a lost signup; a user queued twice, a double report.
            markers = {r[0] for r in db_rows(database, "SELECT user_id FROM keen_signup_markers")}
            queued = [r[0] for r in db_rows(database, "SELECT user_id FROM keen_signup_outbox")]
            assert sorted(queued) == sorted(markers), f"run {run}: ledger and outbox disagree"
            report.append(
                f"run {run:2d}: kill at {delay:.2f}s, {len(accepted):4d} accepted so far, "
                f"{pending(database):3d} pending, {len(keen_user_counts(keen)):4d} in Keen"
            )

        # The last restart: it delivers the backlog without any request.
        server = werkzeug(tmp_path, env, str(tmp_path / "app-final.log"))
        with stopped_at_exit(server):
            server.wait_ready()
            wait_for(lambda: pending(database) == 0, 60, "the final restart to deliver", server)
            # werkzeug keeps the default SIGTERM action: the handler flushes, then chains to it
            assert server.terminate(20) in (0, -signal.SIGTERM), server.why()

        ids = user_ids_by_email(auth0)
        accepted_ids = {ids[email] for email in accepted}
        committed = {r[0] for r in db_rows(database, "SELECT user_id FROM keen_signup_markers")}
        counts = keen_user_counts(keen)
        resends = sum(max(0, token_sends(keen, uid) - 1) for uid in counts)
        duplicates = keen.duplicates_rejected
        log = keen.request_log

    elapsed = time.monotonic() - started
    print("\n" + "\n".join(report))
    print(
        f"{KILL_RUNS} kills in {elapsed:.1f}s: {len(accepted_ids)} accepted signups, "
        f"{len(committed)} committed, {len(counts)} in Keen; {len(log)} Keen requests; "
        f"{resends} re-sent event copies; Keen duplicates_rejected = {duplicates}"
    )
    assert len(accepted_ids) == len(accepted), "one new user per accepted signup"
    assert accepted_ids, "no signup was accepted: the runs were too short to test anything"
    missing = accepted_ids - set(counts)
    assert not missing, f"{len(missing)} accepted signups never reached Keen"
    assert set(counts) == committed, "Keen holds exactly the signups SQLite committed"
    assert set(counts.values()) == {1}, "each signup exactly once in Keen"
    assert duplicates == resends, "every re-send was absorbed by the uniqueness token"
    assert outbox_states(database) == {"delivered": len(committed)}
    assert db_rows(database, "SELECT COUNT(*) FROM keen_signup_dead_letters") == [(0,)]
    states = {r[0] for r in db_rows(database, "SELECT state FROM keen_signup_markers")}
    assert states == {"confirmed"}

    # Keen's side survives a restart of the emulator too: same events from its file.
    with KeenEmulator(database=keen_file) as reopened:
        assert keen_user_counts(reopened) == counts
