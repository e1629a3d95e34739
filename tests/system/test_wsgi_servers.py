"""The quickstart app (``tests/mp_app.py``) under each WSGI server a user deploys it with.

DESIGN §7 names the servers: ``flask run``, gunicorn (sync, gthread and gevent workers, with
and without ``--preload``), uWSGI with its default settings (no ``--enable-threads``) and
waitress. gunicorn sync with ``--preload`` and Flask's own server are covered in depth by
``test_multiprocess.py``; this module runs the same three promises under every other shape,
one server per parametrised case, real HTTP on 127.0.0.1, one emulator pair for the module:

1. a new user's signup reaches Keen while the server is idle afterwards (no request after
   the callback: only the Keen emulator is polled);
2. simultaneous first logins of one user give one event, sent once;
3. Keen is down, a user signs up, the server gets SIGTERM (it must exit within a bound;
   uWSGI's master reloads); Keen comes back, the server is started again and delivers the
   event without a request, once its backoff is over;

and, from start to stop, every process that serves has its sender running before any
signup, and the server's log holds no traceback and no worker that died of an error.
A last test holds SQLite's write lock from another process under a gevent worker.

Each server is a pip package of the ``test`` extra: missing, the case skips locally and
fails under ``CI=true``. ``docs/deployment.md`` says what each server needs.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from _paths import sibling

from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

pytestmark = pytest.mark.slow

mp = sibling("test_multiprocess", __file__)  # its servers, browsers and database peeks
degraded = sibling("test_degraded_store", __file__)  # its SQLite write-lock holder
Browser, Server, app_env, db_rows = mp.Browser, mp.Server, mp.app_env, mp.db_rows
free_port, install_app, pending, sign_up = mp.free_port, mp.install_app, mp.pending, mp.sign_up
tail, token_sends, wait_for = mp.tail, mp.token_sends, mp.wait_for

BIN = os.path.dirname(sys.executable)


class Shape(t.NamedTuple):
    """One way of serving the app: the pip package it needs and its command line."""

    id: str
    package: str  # the importable module of the server's pip package
    argv: t.Callable[[int], list[str]]
    #: uWSGI 2.0's master takes SIGTERM as "reload" (re-exec, same pid): the restart.
    term_reloads: bool = False
    #: What stops it for good (uWSGI: SIGINT; SIGTERM elsewhere).
    stop: signal.Signals = signal.SIGTERM


def _gunicorn(*options: str) -> t.Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [
            sys.executable, "-m", "gunicorn", *options, "-b", f"127.0.0.1:{port}",
            "--graceful-timeout", "10", "--log-level", "info", "mp_app:app",
        ]  # fmt: skip

    return argv


def _uwsgi(*options: str) -> t.Callable[[int], list[str]]:
    # The defaults: no --master, one process, no --enable-threads; an HTTP socket.
    return lambda port: [
        os.path.join(BIN, "uwsgi"), "--http-socket", f"127.0.0.1:{port}",
        "--module", "mp_app:app", "--need-app", *options,
    ]  # fmt: skip


SHAPES = [
    Shape("flask-run", "flask", lambda port: [
        sys.executable, "-m", "flask", "--app", "mp_app", "run", "--port", str(port),
    ]),
    Shape("gunicorn-sync", "gunicorn", _gunicorn("-w", "2")),
    Shape("gunicorn-gthread", "gunicorn", _gunicorn("-k", "gthread", "--threads", "4", "-w", "2")),
    Shape("gunicorn-gthread-preload", "gunicorn", _gunicorn(
        "-k", "gthread", "--threads", "4", "-w", "1", "--preload",
    )),
    Shape("gunicorn-gevent", "gevent", _gunicorn("-k", "gevent", "-w", "2")),
    Shape("gunicorn-gevent-preload", "gevent", _gunicorn("-k", "gevent", "-w", "1", "--preload")),
    Shape("uwsgi", "uwsgi", _uwsgi(), stop=signal.SIGINT),
    Shape(
        "uwsgi-master-processes", "uwsgi", _uwsgi("--master", "--processes", "2"),
        term_reloads=True, stop=signal.SIGINT,
    ),
    Shape("waitress", "waitress", lambda port: [
        sys.executable, "-m", "waitress", "--listen", f"127.0.0.1:{port}", "mp_app:app",
    ]),
]  # fmt: skip


#: Loose bound on a login plus a request while another process holds the write lock.
STALL_BOUND = 5.0


def require(package: str) -> None:
    """Skip without the server's package locally; on CI a missing one is a failure."""
    found = (
        os.path.exists(os.path.join(BIN, "uwsgi"))
        if package == "uwsgi"
        else importlib.util.find_spec(package) is not None
    )
    if found:
        return
    if os.environ.get("CI", "").strip().lower() in ("true", "1"):
        pytest.fail(f"{package} is not installed, and CI=true: these tests must run on CI")
    pytest.skip(f"{package} is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def auth0() -> t.Iterator[Auth0Emulator]:
    with Auth0Emulator() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def keen() -> t.Iterator[KeenEmulator]:
    with KeenEmulator(request_log_limit=None) as emulator:
        yield emulator


def user_id(auth0: Auth0Emulator, email: str) -> str:
    return next(u["user_id"] for u in auth0.users() if u["email"] == email)


def events_of(keen: KeenEmulator, uid: str) -> int:
    return sum(1 for e in keen.events("signups") if e["userId"] == uid)


def serving_pids_all_running(server: Server, probes: int = 12) -> set[int]:
    """Ask ``/healthz`` a few times (each answer comes from whichever process took it):
    every process that serves must have its sender running, before any signup (a
    preloaded app's workers start it at the fork, not at their first signup)."""
    seen: dict[int, bool] = {}
    for _ in range(probes):
        answer = requests.get(server.url + "/healthz", timeout=10).json()
        seen[int(answer["pid"])] = bool(answer["running"])
    assert all(seen.values()), f"a serving process has no sender running: {seen}{server.why()}"
    return set(seen)


def assert_clean_log(path: str) -> None:
    """No traceback and no worker that died of an error, start-up to exit (a SIGTERM
    handler that raises kills a gunicorn worker with status 255, flush undone)."""
    log = tail(path, 100_000)
    for bad in ("Traceback", "exited with code", "BlockingSwitchOutError"):
        assert bad not in log, f"{bad!r} in {path}:\n{tail(path, 60)}"


def stop(server: Server, how: signal.Signals, timeout: float = 40) -> None:
    """Stop for good, within ``timeout`` seconds."""
    server.proc.send_signal(how)
    try:
        server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        pytest.fail(f"still running {timeout}s after {how.name}{server.why()}")


@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
def test_server_delivers_while_idle_once_per_user_and_nothing_lost_over_a_restart(
    shape: Shape, tmp_path: t.Any, auth0: Auth0Emulator, keen: KeenEmulator
) -> None:
    require(shape.package)
    keen.clear_faults()
    install_app(tmp_path)
    database = str(tmp_path / "keen_signup.sqlite3")
    env = app_env(auth0, keen, database)

    def start(log: str) -> Server:
        port = free_port()
        return Server(shape.argv(port), str(tmp_path), env, port, str(tmp_path / log))

    first = f"{shape.id}-new@example.com"
    same = f"{shape.id}-same@example.com"
    late = f"{shape.id}-late@example.com"
    began = time.monotonic()
    phases: list[str] = []

    def phase(name: str) -> None:
        phases.append(f"{name} {time.monotonic() - began:.1f}s")

    server = start("first.log")
    try:
        server.wait_ready()
        serving_pids_all_running(server)
        phase("ready")

        # 1. One new user; then no request at all: the server is idle.
        status, location, _ = sign_up(server.url, first)
        assert (status, location) == (302, "/"), server.why()
        uid = user_id(auth0, first)
        wait_for(lambda: events_of(keen, uid), 20, "the signup in Keen, server idle", server)
        phase("delivered while idle")

        # 2. Simultaneous first logins of one new user.
        browsers = [Browser(server.url) for _ in range(6)]
        try:
            for browser in browsers:
                browser.authorize(same, name="Same")
            barrier = threading.Barrier(len(browsers))

            def call_back(browser: Browser) -> requests.Response:
                barrier.wait(timeout=30)
                return browser.call_back()

            with ThreadPoolExecutor(max_workers=len(browsers)) as pool:
                responses = list(pool.map(call_back, browsers))
        finally:
            for browser in browsers:
                browser.close()
        assert [(r.status_code, r.headers.get("Location")) for r in responses] == [
            (302, "/")
        ] * len(browsers), server.why()
        same_uid = user_id(auth0, same)
        wait_for(lambda: events_of(keen, same_uid), 20, "the one user's event", server)
        phase("simultaneous logins")

        # 3. Keen goes down; a user signs up; SIGTERM: the server exits (uWSGI's master
        # reloads) within a bound, and the event is kept.
        keen.set_down(True)
        status, location, _ = sign_up(server.url, late)
        assert (status, location) == (302, "/"), server.why()
        late_uid = user_id(auth0, late)
        # Every failed try backs the event off (full jitter, doubling), the exit flush of
        # each process included: the restart delivers it when that backoff is over.
        due = 0.0
        if shape.term_reloads:
            server.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "binary reloading uWSGI" in tail(server.log, 400), 40, "a reload")
        else:
            stop(server, signal.SIGTERM)
            assert pending(database) == 1, "the event Keen could not take must still be queued"
            ((attempts, due),) = db_rows(
                database,
                "SELECT attempts, next_attempt_at - ? FROM keen_signup_outbox WHERE user_id = ?",
                (time.time(), late_uid),
            )
            phase(f"{attempts} attempts, due in {due:.1f}s;")
        assert events_of(keen, late_uid) == 0
        phase("stopped")

        # ... Keen is back; the restarted server delivers it without any request.
        keen.set_down(False)
        if not shape.term_reloads:
            server = start("second.log")
        wait_for(lambda: events_of(keen, late_uid), due + 20, "the restart to deliver", server)
        wait_for(lambda: pending(database) == 0, 10, "an empty outbox", server)
        phase("restarted and delivered")
        stop(server, shape.stop)
        phase("stopped")
    finally:
        if server.proc.poll() is None:
            server.kill()

    print(f"\n{shape.id}: " + ", ".join(phases))
    for log in ("first.log", "second.log"):
        if os.path.exists(tmp_path / log):
            assert_clean_log(str(tmp_path / log))
    for uid_ in (uid, same_uid, late_uid):
        assert events_of(keen, uid_) == 1, shape.id
    assert token_sends(keen, uid) == 1
    assert token_sends(keen, same_uid) == 1, "the simultaneous logins were sent more than once"
    assert db_rows(
        database, "SELECT user_id FROM keen_signup_outbox WHERE user_id = ?", (same_uid,)
    ) == [(same_uid,)]


def test_gevent_worker_keeps_serving_while_another_process_holds_the_sqlite_write_lock(
    tmp_path: t.Any, auth0: Auth0Emulator, keen: KeenEmulator
) -> None:
    """gunicorn ``-k gevent`` without ``--preload``: the sender is a greenlet in the one
    event loop of the worker. SQLite waits that blocked in C (its busy handler) would stall
    every request of the worker for up to the sender's 10 s busy timeout; the package waits
    for a write lock with ``time.sleep`` steps, which gevent turns into yields. So while
    another process holds the write lock, a new user's login is answered (the signup goes to
    the spool) and so is the next request, before the lock is released; afterwards the
    spooled signup reaches Keen with no further request."""
    require("gevent")
    keen.clear_faults()
    install_app(tmp_path)
    database = str(tmp_path / "keen_signup.sqlite3")
    env = app_env(auth0, keen, database)
    port = free_port()
    argv = _gunicorn("-k", "gevent", "-w", "1")(port)
    server = Server(argv, str(tmp_path), env, port, str(tmp_path / "gevent.log"))
    email = "gevent-locked@example.com"
    try:
        server.wait_ready()
        lock = degraded.WriteLock(database)
        try:
            began = time.monotonic()
            status, location, _ = sign_up(server.url, email)
            health = requests.get(server.url + "/healthz", timeout=10).json()
            took = time.monotonic() - began
        finally:
            lock.release()
        assert (status, location) == (302, "/"), server.why()
        assert health["spooled"] == 1, health
        # A loose bound (as in test_degraded_store): a worker stalled in C would answer
        # only after the sender's 10 s busy timeout.
        assert took < STALL_BOUND, f"the worker stalled {took:.1f}s behind the lock"
        uid = user_id(auth0, email)
        released = time.monotonic()
        wait_for(lambda: events_of(keen, uid), 30, "the spooled signup in Keen", server)
        delivered = time.monotonic() - released
        print(f"\nlogin and a request {took:.2f}s; delivered {delivered:.1f}s after the release")
        stop(server, signal.SIGTERM)
    finally:
        if server.proc.poll() is None:
            server.kill()
    assert events_of(keen, uid) == 1
    assert_clean_log(server.log)
