"""``/_emulator/*``: the emulator's own control API, for tests in another process and the demo.

These endpoints need no key (they are not Keen's), are not subject to injected faults, and are
not written to the request log, so a test that inspects the log over HTTP does not see itself.
"""

from __future__ import annotations

import json
import typing as t

from ._keen_validation import KeenProblem

if t.TYPE_CHECKING:  # pragma: no cover
    from werkzeug.wrappers import Request

    from ._keen_app import KeenApp

_Response = tuple[int, list[tuple[str, str]], bytes]


def _ok(payload: t.Any, status: int = 200) -> _Response:
    return status, [("Content-Type", "application/json")], json.dumps(payload).encode()


def _bad(message: str) -> _Response:
    body = {"message": message, "error_code": "InvalidEmulatorRequestError"}
    return 400, [("Content-Type", "application/json")], json.dumps(body).encode()


def events_payload(app: KeenApp, collection: str | None) -> dict[str, t.Any]:
    stored = app.store.load(collection)
    return {
        "events": json.loads(json.dumps([s.event for s in stored])),
        "collections": app.store.collections(),
        "duplicates_rejected": app.duplicates_rejected,
    }


def reset(app: KeenApp) -> None:
    app.faults.clear()
    app.store.clear()
    app.log.clear()
    with app._count_lock:
        app.duplicates_rejected = 0


def control(app: KeenApp, request: Request, path: str, body: bytes) -> _Response:
    route = (request.method, path.rstrip("/"))
    if route == ("GET", "/_emulator/events"):
        return _ok(events_payload(app, request.args.get("collection") or None))
    if route == ("GET", "/_emulator/requests"):
        return _ok({"requests": [entry.as_dict() for entry in app.log.snapshot()]})
    if route == ("DELETE", "/_emulator/requests"):
        app.log.clear()
        return _ok({"ok": True})
    if route == ("GET", "/_emulator/status"):
        cfg = app.config
        return _ok(
            {
                "project_id": cfg.project_id,
                "collections": app.store.collections(),
                "duplicates_rejected": app.duplicates_rejected,
            }
        )
    if route == ("POST", "/_emulator/reset"):
        reset(app)
        return _ok({"ok": True})
    if route == ("DELETE", "/_emulator/faults"):
        app.faults.clear()
        return _ok({"ok": True})
    if route == ("POST", "/_emulator/faults"):
        try:
            spec = json.loads(body or b"{}")
        except ValueError:
            return _bad("The body must be a JSON object.")
        kinds = {"status", "latency", "reset", "down", "fail_events"}
        if type(spec) is not dict or not kinds & spec.keys():
            return _bad("Give one of 'status', 'latency', 'reset', 'down' or 'fail_events'.")
        try:
            app.faults.apply(spec)
        except (TypeError, ValueError, KeenProblem) as exc:
            return _bad(f"Invalid fault: {exc}")
        return _ok({"ok": True})
    return (
        404,
        [("Content-Type", "application/json")],
        json.dumps(
            {"message": "Resource not found.", "error_code": "ResourceNotFoundError"}
        ).encode(),
    )
