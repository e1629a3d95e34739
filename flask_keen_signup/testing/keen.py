"""A faithful local emulator of Keen IO's v3 event API, served over real HTTP on 127.0.0.1.

The product's guarantees (exactly once, nothing lost, login never slowed) are claims about how
it behaves against Keen, including Keen's bad days. This emulator lets tests, users' test
suites and the offline demo check those claims without the internet: it implements Keen's
write API (single and batch, per-event results), its keys, validation rules and error bodies,
the ``keen.*`` server fields, uniqueness-token dedupe, add-ons and the ``count`` /
``extraction`` queries, and it can misbehave on demand (error statuses with ``Retry-After``,
HTML error pages, latency, TCP resets, a full outage). What it implements, and the choices
made where Keen's behaviour is unknown, are listed in ``docs/keen-emulator.md``.

From Python::

    with KeenEmulator() as keen:
        app.config["KEEN_API_URL"] = keen.url
        ...
        assert keen.events("signups")[0]["userId"] == "auth0|abc"

From a shell: ``python -m flask_keen_signup.testing.keen --port 8765``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import typing as t

from ._keen_app import KeenApp
from ._keen_app import KeenConfig
from ._keen_control import reset as _reset_app
from ._keen_faults import EVENT_FAULT_MESSAGE
from ._keen_faults import EventFault
from ._keen_faults import KeenHTTPServer
from ._keen_faults import LoggedRequest
from ._keen_store import EventStore
from ._keen_store import MemoryStore
from ._keen_store import SQLiteStore

if t.TYPE_CHECKING:  # pragma: no cover
    from types import TracebackType

__all__ = ["KeenEmulator", "LoggedRequest", "main"]


class KeenEmulator:
    """Keen's v3 API for one project, on a real port. A context manager.

    :param project_id: the only project that exists; any other answers 404.
    :param write_key: accepted for writes. ``read_key`` for queries; ``master_key`` for both
        and for deletes.
    :param port: ``0`` picks a free port; read it back from :attr:`port` / :attr:`url`.
    :param database: a SQLite file to keep events and uniqueness tokens in, so they survive
        restarts; by default they live in memory.
    :param strict_arrays: reject arrays of objects or arrays with
        ``ListsOfNonPrimitivesNotAllowedError`` (Keen's older behaviour).
    :param property_name_max: the longest valid property name (Keen's server message says
        ``<= 256``; its guide says ``< 256``: pass 255 for that reading).
    :param batch_malformed_returns_200: answer a malformed batch with ``200 {}`` and store
        nothing, as real Keen has been reported to do, instead of ``400 InvalidBatchError``.
    :param duplicate_token_response: ``"created"`` (default) answers a duplicate uniqueness
        token like a success, without storing; ``"error"`` answers ``409 DuplicateEventError``
        (in a batch, that item's error).
    :param visibility_delay: seconds before a stored event shows in queries (real Keen: up to
        ~10 s). :meth:`events` is not delayed.
    :param request_log_limit: keep at most this many :attr:`request_log` entries (oldest are
        dropped), so a long benchmark cannot exhaust memory; ``None`` keeps all.
    """

    def __init__(
        self,
        project_id: str = "demo-project",
        write_key: str = "demo-write-key",
        read_key: str = "demo-read-key",
        master_key: str = "demo-master-key",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        database: str | None = None,
        strict_arrays: bool = False,
        property_name_max: int = 256,
        batch_malformed_returns_200: bool = False,
        duplicate_token_response: str = "created",
        visibility_delay: float = 0.0,
        request_log_limit: int | None = 10_000,
    ) -> None:
        if duplicate_token_response not in ("created", "error"):
            raise ValueError("duplicate_token_response must be 'created' or 'error'")
        self.project_id = project_id
        self.write_key = write_key
        self.read_key = read_key
        self.master_key = master_key
        self.database = database
        config = KeenConfig(
            project_id=project_id,
            write_key=write_key,
            read_key=read_key,
            master_key=master_key,
            strict_arrays=strict_arrays,
            property_name_max=property_name_max,
            batch_malformed_returns_200=batch_malformed_returns_200,
            duplicate_token_response=duplicate_token_response,
            visibility_delay=visibility_delay,
        )
        store: EventStore = SQLiteStore(database, project_id) if database else MemoryStore()
        self._app = KeenApp(config, store, request_log_limit)
        self._server = KeenHTTPServer(self._app, host, port)

    def __repr__(self) -> str:  # never shows keys
        where = self.url if self.running else "stopped"
        return f"<KeenEmulator project={self.project_id!r} {where}>"

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server._server is not None

    @property
    def port(self) -> int:
        """The port being served (raises ``RuntimeError`` before :meth:`start`)."""
        return self._server.port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash): ``KEEN_API_URL``."""
        return self._server.url

    def start(self) -> KeenEmulator:
        """Start serving (idempotent). Returns ``self`` for ``KeenEmulator().start()``."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving. Stored events stay readable through :meth:`events`."""
        self._app.faults.wake()  # requests sleeping in injected latency answer now
        self._server.stop()
        self._app.store.close()

    def __enter__(self) -> KeenEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- inspection ---------------------------------------------------------------------

    def events(self, collection: str | None = None) -> list[dict[str, t.Any]]:
        """Stored events (with ``keen.created_at`` / ``id`` / ``timestamp``), arrival order.

        Copies: mutating them does not change what the emulator serves. All collections when
        ``collection`` is ``None``. Not subject to ``visibility_delay``.
        """
        stored = [s.event for s in self._app.store.load(collection)]
        return t.cast("list[dict[str, t.Any]]", json.loads(json.dumps(stored)))

    def collections(self) -> list[str]:
        """Names of the collections holding at least one event, in order of first event."""
        return self._app.store.collections()

    @property
    def request_log(self) -> list[LoggedRequest]:
        """Every API request received (faulted ones too; not ``/_emulator/*``), oldest first."""
        return self._app.log.snapshot()

    def clear_log(self) -> None:
        self._app.log.clear()

    @property
    def duplicates_rejected(self) -> int:
        """Events dropped because their uniqueness token was already stored."""
        return self._app.duplicates_rejected

    # --- faults -------------------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        status: int,
        *,
        retry_after: float | int | str | None = None,
        html: bool = False,
        error_code: str | None = None,
        message: str | None = None,
        body: str | bytes | None = None,
        content_type: str | None = None,
    ) -> None:
        """Answer the next ``count`` API requests with ``status`` instead of serving them.

        The body is Keen's ``{"message", "error_code"}`` (``InternalServerError`` for 5xx,
        ``RateLimitExceededError`` for 429, see the docs for the rest; override with
        ``error_code``/``message``), or an nginx-style HTML page with ``html=True``, or
        ``body`` sent as is (``content_type`` defaults to ``text/html; charset=utf-8``):
        what a proxy or load balancer in front of Keen answers with.
        ``retry_after`` becomes a ``Retry-After`` header (seconds, or an HTTP date string).
        Nothing in a faulted request is stored.
        """
        spec: dict[str, t.Any] = {"status": status, "count": count, "html": html}
        spec.update(retry_after=retry_after, error_code=error_code, message=message)
        spec.update(body=body, content_type=content_type)
        self._app.faults.apply(spec)

    def fail_events(
        self,
        predicate: t.Callable[[dict[str, t.Any]], bool],
        *,
        error_code: str = "InternalServerError",
        message: str | None = None,
        count: int | None = None,
    ) -> None:
        """Fail the events ``predicate`` picks, inside requests that are otherwise answered.

        ``predicate`` gets each event as the client sent it. In a batch a picked event gets
        Keen's per-event failure (``{"success": false, "error": {"name": error_code, ...}}``)
        and the others are stored; a picked single write is answered with the error (500 for
        ``InternalServerError``, else 400). ``count`` picked events fail, then the rule stops
        (``None``: until :meth:`clear_faults`). Over HTTP: ``POST /_emulator/faults`` with
        ``{"fail_events": {"where": {"userId": "auth0|x"}, "error_code": ..., "count": ...}}``
        (every top-level property in ``where`` equal).
        """
        self._app.faults.add_event_fault(
            EventFault(
                matches=predicate,
                error_code=error_code,
                message=message or EVENT_FAULT_MESSAGE,
                remaining=count,
            )
        )

    def add_latency(self, seconds: float, count: int | None = None) -> None:
        """Delay the next ``count`` API requests (``None``: all, until :meth:`clear_faults`)."""
        self._app.faults.apply({"latency": seconds, "count": count})

    def reset_next(self, count: int) -> None:
        """Reset the TCP connection of the next ``count`` API requests: no HTTP response."""
        self._app.faults.apply({"reset": count})

    def set_down(self, down: bool) -> None:
        """While down, every API request is reset like :meth:`reset_next` (an outage)."""
        self._app.faults.apply({"down": down})

    def clear_faults(self) -> None:
        self._app.faults.clear()

    def reset(self) -> None:
        """Forget events, uniqueness tokens, the log, faults and counters."""
        _reset_app(self._app)


def main(argv: list[str] | None = None) -> int:
    """Run an emulator in the foreground until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m flask_keen_signup.testing.keen",
        description="Serve a local emulator of Keen IO's v3 event API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--project-id", default="demo-project")
    parser.add_argument("--write-key", default="demo-write-key")
    parser.add_argument("--read-key", default="demo-read-key")
    parser.add_argument("--master-key", default="demo-master-key")
    parser.add_argument("--database", help="SQLite file, so events survive restarts")
    parser.add_argument("--strict-arrays", action="store_true")
    parser.add_argument("--property-name-max", type=int, default=256)
    parser.add_argument("--batch-malformed-returns-200", action="store_true")
    parser.add_argument(
        "--duplicate-token-response", choices=("created", "error"), default="created"
    )
    parser.add_argument("--visibility-delay", type=float, default=0.0)
    args = parser.parse_args(argv)

    emulator = KeenEmulator(
        args.project_id,
        args.write_key,
        args.read_key,
        args.master_key,
        args.host,
        args.port,
        database=args.database,
        strict_arrays=args.strict_arrays,
        property_name_max=args.property_name_max,
        batch_malformed_returns_200=args.batch_malformed_returns_200,
        duplicate_token_response=args.duplicate_token_response,
        visibility_delay=args.visibility_delay,
    )
    done = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with emulator:
        # The URL alone on stdout's first line, for scripts that start the emulator and read
        # where it listens. Keys are deliberately not printed: terminals and CI logs keep them.
        print(emulator.url, flush=True)
        print(
            f"Keen emulator for project {args.project_id!r} on {emulator.url}; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        while not done.wait(0.5):
            pass
    print("Keen emulator stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
