"""The Keen emulator's WSGI application: routing, auth, writes, queries, control endpoints.

Kept free of werkzeug's routing and of per-event copies because the batch endpoint is on the
product's benchmark path; everything per event is one validation walk, a dict build and an
append.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import threading
import time
import typing as t
from datetime import datetime
from datetime import timezone
from urllib.parse import unquote

from werkzeug.wrappers import Request

from ._keen_addons import run_addons
from ._keen_faults import FaultInjector
from ._keen_faults import LoggedRequest
from ._keen_faults import RequestLog
from ._keen_faults import ResetConnection
from ._keen_query import format_bucket_time
from ._keen_query import group_counts
from ._keen_query import interval_buckets
from ._keen_query import matches
from ._keen_query import parse_filters
from ._keen_query import parse_group_by
from ._keen_query import parse_interval
from ._keen_query import parse_timeframe
from ._keen_query import parse_timezone
from ._keen_store import EventStore
from ._keen_store import PendingEvent
from ._keen_store import StoredEvent
from ._keen_validation import KeenProblem
from ._keen_validation import check_collection_name
from ._keen_validation import check_keen_namespace
from ._keen_validation import check_properties
from ._keen_validation import format_timestamp

if t.TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIEnvironment

MAX_REQUEST_BYTES = 10_000_000
MAX_EVENT_BYTES = 900_000
TOKEN_TTL = 31 * 24 * 3600.0
_SUCCESS = {"success": True}
_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_Response = tuple[int, list[tuple[str, str]], bytes]


@dataclasses.dataclass(frozen=True)
class KeenConfig:
    project_id: str
    write_key: str
    read_key: str
    master_key: str
    strict_arrays: bool = False
    property_name_max: int = 256
    batch_malformed_returns_200: bool = False
    duplicate_token_response: str = "created"
    visibility_delay: float = 0.0


def _json(status: int, payload: t.Any, headers: list[tuple[str, str]] | None = None) -> _Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return status, [("Content-Type", "application/json"), *(headers or [])], body


def _error(problem: KeenProblem) -> _Response:
    return _json(problem.status, {"message": problem.message, "error_code": problem.error_code})


def _item_error(problem: KeenProblem) -> dict[str, t.Any]:
    return {"success": False, "error": {"name": problem.error_code, "description": problem.message}}


def _not_found() -> KeenProblem:
    return KeenProblem("ResourceNotFoundError", "Resource not found.", 404)


def _duplicate(collection: str) -> KeenProblem:
    return KeenProblem(
        "DuplicateEventError",
        f"An event with this keen.uniqueness_token was already recorded in '{collection}'.",
        409,
    )


class KeenApp:
    """All state of one emulated project; :class:`~.keen.KeenEmulator` is its public face."""

    def __init__(self, config: KeenConfig, store: EventStore, log_limit: int | None) -> None:
        self.config = config
        self.store = store
        self.faults = FaultInjector()
        self.log = RequestLog(log_limit)
        self.clock: t.Callable[[], float] = time.time
        self.duplicates_rejected = 0
        self._count_lock = threading.Lock()

    # --- WSGI entry point -------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        received = self.clock()
        request = Request(environ)
        body = request.get_data()
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
        path = raw.split("?", 1)[0] if raw.startswith("/") else request.path
        if path.startswith("/_emulator/"):
            status, headers, payload = self._control(request, path, body)
        else:
            latency, answer = self.faults.take()
            if latency:
                self.faults.sleep(latency)
            if answer is not None and answer.status == 0:
                self._log(request, body, 0, received)
                raise ResetConnection("connection reset by the Keen emulator")
            if answer is not None:
                content_type, payload = answer.body()
                status, headers = answer.status, [("Content-Type", content_type)]
                if answer.retry_after is not None:
                    headers.append(("Retry-After", answer.retry_after))
            else:
                try:
                    status, headers, payload = self._route(request, path, body)
                except KeenProblem as problem:
                    status, headers, payload = _error(problem)
            self._log(request, body, status, received)
        headers.append(("Content-Length", str(len(payload))))
        start_response(f"{status} {_reason(status)}", headers)
        return [payload]

    def _log(self, request: Request, body: bytes, status: int, received: float) -> None:
        self.log.append(
            LoggedRequest(
                method=request.method,
                path=request.path,
                query=request.args.to_dict(),
                headers=dict(request.headers),
                body=body,
                status=status,
                time=received,
            )
        )

    # --- routing and auth -------------------------------------------------------------

    def _route(self, request: Request, path: str, body: bytes) -> _Response:
        parts = [unquote(p) for p in path.split("/")]
        if len(parts) < 5 or parts[1] != "3.0" or parts[2] != "projects":
            raise _not_found()
        if parts[3] != self.config.project_id:
            raise _not_found()
        rest = parts[4:]
        method = request.method
        if rest == ["events"]:
            if method == "POST":
                self._auth(request, "write")
                return self._write_batch(request, body)
            if method == "GET":
                self._auth(request, "read")
                return _json(200, self._schema_all())
        elif len(rest) == 2 and rest[0] == "events":
            collection = rest[1]
            if method == "POST":
                self._auth(request, "write")
                return self._write_single(request, collection, body)
            if method == "GET" and "data" in request.args:
                self._auth(request, "write")
                return self._beacon(request, collection)
            if method == "GET":
                self._auth(request, "read")
                return _json(200, self._schema(collection))
            if method == "DELETE":
                self._auth(request, "master")
                return self._delete(request, collection)
        elif len(rest) == 2 and rest[0] == "queries" and method in ("GET", "POST"):
            self._auth(request, "read")
            return self._query(request, rest[1], body)
        else:
            raise _not_found()
        raise KeenProblem("MethodNotAllowedError", f"{method} is not allowed here.", 405)

    def _auth(self, request: Request, need: str) -> None:
        key = request.headers.get("Authorization") or request.args.get("api_key")
        cfg = self.config
        if not key:
            raise KeenProblem(
                "InvalidApiKeyError",
                "An API key is required: send it in the Authorization header.",
                401,
            )
        allowed = {
            "write": (cfg.write_key, cfg.master_key),
            "read": (cfg.read_key, cfg.master_key),
            "master": (cfg.master_key,),
        }[need]
        if key in allowed and key:
            return
        known = key in (cfg.write_key, cfg.read_key, cfg.master_key)
        if need == "master" and known:
            raise KeenProblem("AdminOnlyEndpointError", "authorization error", 401)
        detail = "does not allow this operation" if known else "is not valid for this project"
        raise KeenProblem(
            "InvalidApiKeyError", f"The API key {detail}; a {need} key is required.", 401
        )

    # --- writes -----------------------------------------------------------------------

    def _placeholders(self, request: Request) -> dict[str, str]:
        return {
            "${keen.ip}": request.remote_addr or "",
            "${keen.user_agent}": request.headers.get("User-Agent", ""),
        }

    def _prepare(
        self,
        event: dict[str, t.Any],
        placeholders: dict[str, str],
        created_at: str,
        received: float,
    ) -> PendingEvent:
        """Validate, then add the server fields and run add-ons, in place."""
        cfg = self.config
        check_properties(event, cfg.property_name_max, cfg.strict_arrays, placeholders, root=True)
        given = event.get("keen")
        keen: dict[str, t.Any] = {"created_at": created_at, "timestamp": created_at}
        keen["id"] = os.urandom(12).hex()
        token = None
        timestamp = received
        addons = None
        if given is not None or "keen" in event:
            ns = check_keen_namespace(given, cfg.property_name_max)
            if ns.timestamp is not None:
                keen["timestamp"] = format_timestamp(ns.timestamp)
                timestamp = ns.timestamp.timestamp()
            if ns.uniqueness_token is not None:
                token = keen["uniqueness_token"] = ns.uniqueness_token
            if ns.location is not None:
                keen["location"] = ns.location
            addons = ns.addons
        event["keen"] = keen
        if addons:
            run_addons(event, addons)
        return PendingEvent(event, token, received, timestamp)

    def _count_duplicates(self, n: int) -> None:
        if n:
            with self._count_lock:
                self.duplicates_rejected += n

    def _write_single(self, request: Request, collection: str, body: bytes) -> _Response:
        _check_size(body, single=True)
        check_collection_name(collection)
        event = _loads(body)
        if type(event) is not dict:
            raise KeenProblem("InvalidEventError", "An event must be a JSON object (a dictionary).")
        return self._store_single(request, collection, event)

    def _store_single(
        self, request: Request, collection: str, event: dict[str, t.Any]
    ) -> _Response:
        fault = self.faults.event_failure(event)
        if fault is not None:
            status = 500 if fault.error_code == "InternalServerError" else 400
            raise KeenProblem(fault.error_code, fault.message, status)
        received = self.clock()
        created_at = format_timestamp(datetime.fromtimestamp(received, timezone.utc))
        pending = self._prepare(event, self._placeholders(request), created_at, received)
        if not self.store.add(collection, [pending], TOKEN_TTL)[0]:
            self._count_duplicates(1)
            if self.config.duplicate_token_response == "error":
                raise _duplicate(collection)
        return _json(201, {"created": True})

    def _write_batch(self, request: Request, body: bytes) -> _Response:
        _check_size(body, single=False)
        try:
            batch = _loads(body)
        except KeenProblem:
            batch = None
        if type(batch) is not dict or not all(type(v) is list for v in batch.values()):
            if self.config.batch_malformed_returns_200:
                return _json(200, {})
            raise KeenProblem(
                "InvalidBatchError",
                "The batch must be a JSON object mapping each event collection name to a "
                "list of events.",
            )
        if len(body) > MAX_EVENT_BYTES:
            for items in batch.values():
                for item in items:
                    _check_size(json.dumps(item, separators=(",", ":")).encode(), single=True)
        placeholders = self._placeholders(request)
        received = self.clock()
        created_at = format_timestamp(datetime.fromtimestamp(received, timezone.utc))
        prepare = self._prepare
        event_failure = self.faults.event_failure
        dup_error = self.config.duplicate_token_response == "error"
        results: dict[str, list[dict[str, t.Any]]] = {}
        duplicates = 0
        for collection, items in batch.items():
            out: list[t.Any] = []
            try:
                check_collection_name(collection)
            except KeenProblem as problem:
                results[collection] = [_item_error(problem)] * len(items)
                continue
            pending: list[PendingEvent] = []
            slots: list[int] = []
            for item in items:
                if type(item) is not dict:
                    out.append(
                        _item_error(
                            KeenProblem("InvalidEventError", "An event must be a JSON object.")
                        )
                    )
                    continue
                fault = event_failure(item)
                if fault is not None:
                    out.append(_item_error(KeenProblem(fault.error_code, fault.message)))
                    continue
                try:
                    pending.append(prepare(item, placeholders, created_at, received))
                except KeenProblem as problem:
                    out.append(_item_error(problem))
                    continue
                slots.append(len(out))
                out.append(_SUCCESS)
            if pending:
                for slot, stored in zip(
                    slots, self.store.add(collection, pending, TOKEN_TTL), strict=True
                ):
                    if not stored:
                        duplicates += 1
                        if dup_error:
                            out[slot] = _item_error(_duplicate(collection))
            results[collection] = out
        self._count_duplicates(duplicates)
        return _json(200, results)

    def _beacon(self, request: Request, collection: str) -> _Response:
        data = request.args["data"].replace(" ", "+")
        data += "=" * (-len(data) % 4)
        try:
            raw = base64.b64decode(data.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise KeenProblem("InvalidEventError", "data is not valid base64.") from None
        _check_size(raw, single=True)
        check_collection_name(collection)
        event = _loads(raw)
        if type(event) is not dict:
            raise KeenProblem("InvalidEventError", "An event must be a JSON object.")
        self._store_single(request, collection, event)
        redirect = request.args.get("redirect")
        if redirect:
            return 302, [("Location", redirect), ("Content-Type", "text/plain")], b""
        return 200, [("Content-Type", "image/gif")], _GIF

    # --- reads ------------------------------------------------------------------------

    def _select(self, params: t.Mapping[str, t.Any], collection: str) -> list[StoredEvent]:
        now = self.clock()
        tz = parse_timezone(params.get("timezone"))
        frame = parse_timeframe(params.get("timeframe"), datetime.fromtimestamp(now, tz), tz)
        filters = parse_filters(params.get("filters"))
        visible_until = now - self.config.visibility_delay
        chosen = []
        for stored in self.store.load(collection):
            if stored.created > visible_until:
                continue
            if frame is not None and not frame[0] <= stored.timestamp < frame[1]:
                continue
            if filters and not matches(stored.event, filters):
                continue
            chosen.append(stored)
        return chosen

    def _query(self, request: Request, analysis: str, body: bytes) -> _Response:
        params: dict[str, t.Any] = request.args.to_dict()
        if request.method == "POST" and body:
            posted = _loads(body)
            if type(posted) is dict:
                params.update(
                    {
                        k: json.dumps(v) if isinstance(v, (dict, list)) else v
                        for k, v in posted.items()
                    }
                )
        if analysis not in ("count", "extraction"):
            raise KeenProblem(
                "InvalidAnalysisTypeError",
                f"The Keen emulator supports count and extraction, not {analysis!r}.",
                404,
            )
        collection = params.get("event_collection")
        if not collection:
            raise KeenProblem(
                "MissingRequiredPropertyError", "You must specify a value for event_collection."
            )
        chosen = self._select(params, collection)
        if analysis == "count":
            return _json(200, {"result": self._count(params, chosen)})
        events = [s.event for s in chosen]
        latest = params.get("latest")
        if latest:
            try:
                events = events[-int(latest) :]
            except ValueError:
                raise KeenProblem("InvalidParameterError", "latest must be an integer.") from None
        return _json(200, {"result": events})

    def _count(self, params: t.Mapping[str, t.Any], chosen: list[StoredEvent]) -> t.Any:
        """A number, or Keen's shapes for ``group_by`` and ``interval`` (and both)."""
        interval = parse_interval(params.get("interval"))
        names = parse_group_by(params.get("group_by"))

        def result(stored: list[StoredEvent]) -> t.Any:
            if names is None:
                return len(stored)
            return group_counts((s.event for s in stored), names)

        if interval is None:
            return result(chosen)
        tz = parse_timezone(params.get("timezone"))
        frame = parse_timeframe(
            params.get("timeframe"), datetime.fromtimestamp(self.clock(), tz), tz
        )
        if frame is None:
            raise KeenProblem(
                "TimeframeDefinitionError", "A query with an interval needs a timeframe."
            )
        series = []
        for start, end in interval_buckets(frame, interval, tz):
            low, high = start.timestamp(), end.timestamp()
            inside = [s for s in chosen if low <= s.timestamp < high]
            series.append(
                {
                    "value": result(inside),
                    "timeframe": {
                        "start": format_bucket_time(start),
                        "end": format_bucket_time(end),
                    },
                }
            )
        return series

    def _delete(self, request: Request, collection: str) -> _Response:
        chosen = self._select(request.args.to_dict(), collection)
        self.store.delete(collection, {s.seq for s in chosen})
        return 204, [], b""

    def _schema(self, collection: str) -> dict[str, t.Any]:
        properties: dict[str, str] = {}
        stored = self.store.load(collection)
        if not stored:
            raise _not_found()
        for s in stored:
            _flatten_types(s.event, "", properties)
        return {"properties": properties}

    def _schema_all(self) -> list[dict[str, t.Any]]:
        pid = self.config.project_id
        return [
            {**self._schema(name), "name": name, "url": f"/3.0/projects/{pid}/events/{name}"}
            for name in self.store.collections()
        ]

    # --- /_emulator control endpoints -------------------------------------------------

    def _control(self, request: Request, path: str, body: bytes) -> _Response:
        from ._keen_control import control

        return control(self, request, path, body)


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _reject_constant(name: str) -> t.NoReturn:
    raise ValueError(name)


def _loads(body: bytes) -> t.Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError):
        raise KeenProblem("InvalidEventError", "The request body is not valid JSON.") from None


def _check_size(body: bytes, *, single: bool) -> None:
    if len(body) > MAX_REQUEST_BYTES:
        raise KeenProblem(
            "RequestEntityTooLargeError",
            f"The request is larger than {MAX_REQUEST_BYTES} bytes.",
            413,
        )
    if single and len(body) > MAX_EVENT_BYTES:
        raise KeenProblem(
            "EventTooLargeError", f"An event is larger than {MAX_EVENT_BYTES} bytes.", 413
        )


def _flatten_types(node: dict[str, t.Any], prefix: str, out: dict[str, str]) -> None:
    for name, value in node.items():
        key = prefix + name
        if isinstance(value, dict):
            _flatten_types(value, key + ".", out)
        elif key in ("keen.timestamp", "keen.created_at"):
            out[key] = "datetime"
        elif isinstance(value, bool):
            out[key] = "bool"
        elif isinstance(value, (int, float)):
            out[key] = "num"
        elif isinstance(value, str):
            out[key] = "string"
        elif isinstance(value, list):
            out[key] = "list"
        else:
            out.setdefault(key, "null")
