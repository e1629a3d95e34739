"""Fault injection, the request log and the HTTP server plumbing of the Keen emulator.

Faults exist because the product promises to survive Keen's bad days: error statuses with
``Retry-After``, HTML error pages from a load balancer, slow answers, and connections that
die without any response. Each must look on the wire exactly as it would in production, so a
reset really is a TCP RST (``SO_LINGER`` 0 + close), not an HTTP error.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import socket
import struct
import threading
import typing as t
from http import HTTPStatus

from werkzeug.serving import WSGIRequestHandler
from werkzeug.serving import make_server

from ._server import ThreadedServer

if t.TYPE_CHECKING:  # pragma: no cover
    from _typeshed.wsgi import WSGIEnvironment


@dataclasses.dataclass(frozen=True)
class LoggedRequest:
    """One request as the emulator received it, and the status it answered.

    ``status`` is ``0`` when the connection was reset instead of answered. ``headers`` hold
    the keys the client sent (that is what tests assert on); nothing else in the emulator
    prints or logs them.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int
    time: float

    def json(self) -> t.Any:
        """The body parsed as JSON (raises ``ValueError`` if it is not JSON)."""
        return json.loads(self.body)

    def as_dict(self) -> dict[str, t.Any]:
        """JSON-safe form for ``GET /_emulator/requests`` (the body decoded as UTF-8)."""
        data = dataclasses.asdict(self)
        data["body"] = self.body.decode("utf-8", "replace")
        return data


class RequestLog:
    """Thread-safe, bounded (oldest dropped first) list of :class:`LoggedRequest`."""

    def __init__(self, limit: int | None) -> None:
        self._entries: collections.deque[LoggedRequest] = collections.deque(maxlen=limit)
        self._lock = threading.Lock()

    def append(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._entries.append(entry)

    def snapshot(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


#: error_code sent with an injected status. 5xx use Keen's one known server error name.
FAULT_ERROR_CODES = {
    400: "BadRequestError",
    401: "InvalidApiKeyError",
    402: "PaymentRequiredError",
    403: "ForbiddenError",
    404: "ResourceNotFoundError",
    408: "RequestTimeoutError",
    413: "RequestEntityTooLargeError",
    429: "RateLimitExceededError",
}


@dataclasses.dataclass
class Answer:
    """A queued fault that answers (or resets) requests instead of the emulator."""

    remaining: int
    status: int  # 0 = reset the connection
    retry_after: str | None = None
    html: bool = False
    error_code: str | None = None
    message: str | None = None
    #: A body sent as is instead of Keen's JSON or the nginx page (e.g. a proxy's own
    #: HTML, an empty body, JSON without ``error_code``).
    raw_body: bytes | None = None
    content_type: str | None = None

    def body(self) -> tuple[str, bytes]:
        """``(content_type, body)``: Keen's JSON error, an nginx-style HTML page, or the
        caller's own body."""
        if self.raw_body is not None:
            return self.content_type or "text/html; charset=utf-8", self.raw_body
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Error"
        if self.html:
            title = f"{self.status} {reason}"
            page = (
                f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
                f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
                "</body>\r\n</html>\r\n"
            )
            return "text/html", page.encode()
        code = self.error_code or FAULT_ERROR_CODES.get(
            self.status, "InternalServerError" if self.status >= 500 else "BadRequestError"
        )
        message = self.message or f"{reason} (injected by the Keen emulator)."
        return "application/json", json.dumps({"message": message, "error_code": code}).encode()


@dataclasses.dataclass
class EventFault:
    """Events that fail inside an otherwise answered request (``fail_events``).

    :param matches: called with each event as the client sent it.
    :param remaining: how many more matching events fail; ``None``: until cleared.
    """

    matches: t.Callable[[dict[str, t.Any]], bool]
    error_code: str
    message: str
    remaining: int | None = None


def event_matcher(where: t.Mapping[str, t.Any]) -> t.Callable[[dict[str, t.Any]], bool]:
    """The HTTP form of a predicate: every top-level property in ``where`` is equal."""
    items = list(where.items())
    return lambda event: all(name in event and event[name] == value for name, value in items)


#: The description of an event failed by ``fail_events`` unless one is given.
EVENT_FAULT_MESSAGE = (
    "An internal error occurred while saving this event (injected by the Keen emulator)."
)


class FaultInjector:
    """The queued faults. Every method is thread-safe.

    Answer faults (statuses and resets) form one FIFO queue, consumed in the order they were
    added; latency is independent and applies on top of whatever answers the request.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._answers: collections.deque[Answer] = collections.deque()
        self._latency = 0.0
        self._latency_left: int | None = None
        self._down = False
        self._generation = 0
        self._event_faults: list[EventFault] = []

    def add_answer(self, answer: Answer) -> None:
        if answer.remaining > 0:
            with self._cond:
                self._answers.append(answer)

    def apply(self, spec: dict[str, t.Any]) -> None:
        """Add the faults one ``POST /_emulator/faults`` body describes (the Python API too).

        Raises ``ValueError`` / ``TypeError`` for values that are not numbers.
        """
        if "status" in spec:
            retry_after = spec.get("retry_after")
            self.add_answer(
                Answer(
                    remaining=int(spec.get("count", 1)),
                    status=int(spec["status"]),
                    retry_after=None if retry_after is None else _retry_after(retry_after),
                    html=bool(spec.get("html", False)),
                    error_code=spec.get("error_code"),
                    message=spec.get("message"),
                    raw_body=_raw_body(spec.get("body")),
                    content_type=_content_type(spec.get("content_type")),
                )
            )
        if "reset" in spec:
            self.add_answer(Answer(remaining=int(spec["reset"]), status=0))
        if "latency" in spec:
            count = spec.get("count")
            self.add_latency(float(spec["latency"]), None if count is None else int(count))
        if "down" in spec:
            self.set_down(bool(spec["down"]))
        if "fail_events" in spec:
            rule = spec["fail_events"]
            if type(rule) is not dict or type(rule.get("where")) is not dict:
                raise ValueError("'fail_events' needs {'where': {property: value, ...}}")
            count = rule.get("count")
            self.add_event_fault(
                EventFault(
                    matches=event_matcher(rule["where"]),
                    error_code=str(rule.get("error_code", "InternalServerError")),
                    message=str(rule.get("message", EVENT_FAULT_MESSAGE)),
                    remaining=None if count is None else int(count),
                )
            )

    def add_event_fault(self, fault: EventFault) -> None:
        with self._cond:
            self._event_faults.append(fault)

    def event_failure(self, event: dict[str, t.Any]) -> EventFault | None:
        """The fault that fails ``event``, if any (and count it)."""
        with self._cond:
            if not self._event_faults:
                return None
            for fault in self._event_faults:
                if fault.remaining != 0 and fault.matches(event):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
            return None

    def add_latency(self, seconds: float, count: int | None) -> None:
        with self._cond:
            self._latency = max(0.0, float(seconds))
            self._latency_left = count

    def set_down(self, down: bool) -> None:
        with self._cond:
            self._down = bool(down)

    def clear(self) -> None:
        """Drop every fault and wake requests sleeping in injected latency."""
        with self._cond:
            self._answers.clear()
            self._event_faults.clear()
            self._latency, self._latency_left, self._down = 0.0, None, False
            self._generation += 1
            self._cond.notify_all()

    def take(self) -> tuple[float, Answer | None]:
        """Consume the faults for one request: ``(latency, answer or None)``."""
        with self._cond:
            latency = 0.0
            if self._latency > 0 and self._latency_left != 0:
                latency = self._latency
                if self._latency_left is not None:
                    self._latency_left -= 1
            if self._down:
                return latency, Answer(1, 0)
            if not self._answers:
                return latency, None
            head = self._answers[0]
            head.remaining -= 1
            if head.remaining <= 0:
                self._answers.popleft()
            return latency, head

    def wake(self) -> None:
        """Wake requests sleeping in injected latency, keeping the faults (used by stop)."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` unless :meth:`clear` or :meth:`wake` is called meanwhile."""
        with self._cond:
            generation = self._generation
            self._cond.wait_for(lambda: self._generation != generation, timeout=seconds)


def _raw_body(value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError("'body' must be a string (sent as UTF-8) or bytes")


def _content_type(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or any(c in value for c in "\r\n"):
        raise ValueError("'content_type' must be a one-line string")
    return value


def _retry_after(value: float | int | str) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


class ResetConnection(ConnectionResetError):
    """Raised by the app to have the handler reset the TCP connection (no response)."""


class _RequestHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # werkzeug logs every request line; those carry ?api_key= when a client authenticates
        # by query string, and keys must never reach a log.
        pass

    def connection_dropped(
        self, error: BaseException, environ: WSGIEnvironment | None = None
    ) -> None:
        if not isinstance(error, ResetConnection):
            return
        self.close_connection = True
        sock = self.connection
        try:
            # Linger on, timeout 0: close() discards the connection with an RST, no FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # The socket is only really closed once the buffered reader lets go of it.
            self.rfile.close()
            sock.close()
        except OSError:  # pragma: no cover - already gone
            pass


class KeenHTTPServer(ThreadedServer):
    """:class:`ThreadedServer` with a request handler that can reset and never logs URLs."""

    def start(self) -> None:
        if self._server is not None:
            return
        server = make_server(
            self.host,
            self._requested_port,
            self._app,
            threaded=True,
            request_handler=_RequestHandler,
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="KeenEmulator-server",
            daemon=True,
        )
        self._thread.start()
