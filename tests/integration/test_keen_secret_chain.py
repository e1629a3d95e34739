"""No Keen key is reachable from any exception the Keen clients raise (issue 10, item 4).

For every failure the write client (``keen.py``) and the delete client (``keen_admin.py``,
master key) can meet, over real HTTP against the Keen emulator — connection refused, reset,
timeout, every 4xx/5xx with Keen's body and with an HTML page, 413, a body echoing the key,
bad JSON — the exception is walked: ``str``, ``repr``, ``args``, every attribute
(recursively, so an attached ``requests`` request or response would be searched too,
headers and all) and the whole ``__cause__``/``__context__`` chain. Neither the write key
nor the master key may appear anywhere, whichever of them the failing request carried.
"""

from __future__ import annotations

import math
import socket
import typing as t

import pytest

from flask_keen_signup.exceptions import KeenAPIError
from flask_keen_signup.exceptions import KeenConnectionError
from flask_keen_signup.exceptions import KeenRequestTooLargeError
from flask_keen_signup.keen import KeenClient
from flask_keen_signup.keen_admin import KeenAdminClient
from flask_keen_signup.testing import KeenEmulator

WRITE_KEY = "wk-3f9a1c7e5b2d-write-SECRET"
MASTER_KEY = "mk-8e2b6d4f0a1c-master-SECRET"
READ_KEY = "rk-5d1e9b3a7c2f-read-SECRET"
SECRETS = (WRITE_KEY, MASTER_KEY)
STATUSES = (400, 401, 402, 403, 404, 405, 408, 409, 413, 422, 429, 500, 502, 503, 504)


def reachable_text(root: BaseException, max_depth: int = 8) -> str:
    """Every string reachable from ``root``: its chain, args and attributes, recursively.

    Traceback frames are not walked: their locals hold the client (which must hold its
    key to work); what an exception *carries* is what ends up in logs, error trackers
    and pickled reports.
    """
    parts: list[str] = []
    seen: set[int] = set()
    stack: list[tuple[t.Any, int]] = [(root, 0)]
    while stack:
        obj, depth = stack.pop()
        if obj is None or id(obj) in seen or depth > max_depth:
            continue
        seen.add(id(obj))
        if isinstance(obj, (str, bytes, bytearray)):
            parts.append(obj.decode("utf-8", "replace") if not isinstance(obj, str) else obj)
            continue
        if isinstance(obj, (int, float, bool)):
            continue
        try:
            parts.append(repr(obj))
        except Exception:  # noqa: BLE001
            pass
        if isinstance(obj, BaseException):
            parts.append(str(obj))
            stack += [(obj.__cause__, depth + 1), (obj.__context__, depth + 1)]
            stack += [(a, depth + 1) for a in obj.args]
        if isinstance(obj, dict) or hasattr(obj, "items") and callable(obj.items):
            try:
                for key, value in obj.items():
                    stack += [(key, depth + 1), (value, depth + 1)]
            except Exception:  # noqa: BLE001
                pass
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack += [(item, depth + 1) for item in obj]
        attributes: dict[str, t.Any] = {}
        try:
            attributes.update(vars(obj))
        except TypeError:
            pass
        for slot in getattr(type(obj), "__slots__", ()):
            if isinstance(slot, str) and hasattr(obj, slot):
                attributes[slot] = getattr(obj, slot)
        for name, value in attributes.items():
            if name == "__traceback__":
                continue
            stack.append((value, depth + 1))
    return "\n".join(parts)


def test_the_walker_finds_a_key_hidden_in_an_attached_request() -> None:
    """The walker itself can fail: a key on an attached request object is found."""
    import requests

    prepared = requests.Request(
        "POST", "http://127.0.0.1:1/x", headers={"Authorization": WRITE_KEY}
    ).prepare()
    inner = requests.ConnectionError("refused", request=prepared)
    try:
        try:
            raise inner
        except requests.ConnectionError:
            raise KeenConnectionError("No answer") from None
    except KeenConnectionError as outer:
        assert WRITE_KEY in reachable_text(outer)  # via __context__ (suppressed, not gone)


@pytest.fixture
def keen() -> t.Iterator[KeenEmulator]:
    with KeenEmulator(
        project_id="secret-walk", write_key=WRITE_KEY, read_key=READ_KEY, master_key=MASTER_KEY
    ) as emulator:
        yield emulator


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


Call = t.Callable[[], object]


def _calls(url: str, project: str) -> dict[str, Call]:
    write = KeenClient(project, WRITE_KEY, api_url=url, timeout=(2.0, 0.3))
    admin = KeenAdminClient(project, MASTER_KEY, api_url=url, timeout=(2.0, 0.3))
    return {
        "single": lambda: write.add_event("signups", {"userId": "auth0|a"}),
        "batch": lambda: write.add_events({"signups": [{"userId": "auth0|a"}]}),
        "delete": lambda: admin.delete_user_events("signups", "auth0|a", property_name="userId"),
    }


def _raised(call: Call) -> BaseException | None:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - every kind is checked
        return exc
    return None


def _assert_clean(exc: BaseException | None, what: str) -> None:
    assert exc is not None, f"{what}: expected an error"
    text = reachable_text(exc)
    for secret in SECRETS:
        assert secret not in text, (what, secret, text[:500])


def test_no_key_reachable_from_any_error(keen: KeenEmulator) -> None:
    calls = _calls(keen.url, keen.project_id)
    kinds: set[type] = set()
    for name, call in calls.items():
        # A server or proxy may echo the key a client sent, or another one the app holds
        # (a 401 to the master key quoting the write key): every known key is masked.
        own = f"{MASTER_KEY} {WRITE_KEY}"
        for status in STATUSES:
            for body in ({}, {"html": True}, {"body": ""}, {"body": f"<p>bad {own}</p>"}):
                keen.fail_next(1, status, retry_after=3 if status == 429 else None, **body)
                exc = _raised(call)
                _assert_clean(exc, f"{name} {status} {body}")
                kinds.add(type(exc))
            # a server (or proxy) that echoes the keys in Keen's own error shape
            keen.fail_next(1, status, error_code=f"Err{own}", message=f"key {own}: no")
            _assert_clean(_raised(call), f"{name} {status} echo")
        keen.reset_next(1)
        _assert_clean(_raised(call), f"{name} reset")
        keen.add_latency(1.0, count=1)
        _assert_clean(_raised(call), f"{name} read timeout")
        keen.clear_faults()
        keen.set_down(True)
        _assert_clean(_raised(call), f"{name} down")
        keen.set_down(False)
    for name, call in _calls(_closed_port(), keen.project_id).items():
        exc = _raised(call)
        _assert_clean(exc, f"{name} refused")
        assert isinstance(exc, KeenConnectionError)
    for name, call in _calls(keen.url, "no-such-project").items():
        _assert_clean(_raised(call), f"{name} unknown project")
    assert {KeenAPIError, KeenRequestTooLargeError} <= kinds


def test_no_key_reachable_from_encoding_and_bad_answer_errors(keen: KeenEmulator) -> None:
    client = KeenClient(keen.project_id, WRITE_KEY, api_url=keen.url)
    for bad in ({"x": math.nan}, {"x": math.inf}, {"x": object()}, {"x": "\ud800"}):
        _assert_clean(_raised(lambda bad=bad: client.add_event("signups", bad)), f"{bad!r}")
    # a 2xx that is not JSON: no exception, and nothing in the results names the key
    keen.fail_next(1, 200, body=f"<html>ok {WRITE_KEY}</html>")
    result = client.add_events({"signups": [{"userId": "auth0|a"}]})
    assert not result.all_delivered
    assert WRITE_KEY not in repr(result)
    admin = KeenAdminClient(keen.project_id, MASTER_KEY, api_url=keen.url)
    _assert_clean(_raised(lambda: admin.delete_events("signups", [])), "no filters")
    for client_repr in (repr(client), repr(admin), str(client), str(admin)):
        assert WRITE_KEY not in client_repr and MASTER_KEY not in client_repr


def test_a_header_http_client_refuses_is_no_response_without_the_value(
    keen: KeenEmulator,
) -> None:
    """``http.client`` answers a header value with a line break with ``ValueError: Invalid
    header value b'<the value>'``, past ``requests``' own checks (an auth object sets the
    header after them). ``send`` turns it into a :class:`NoResponse` naming no value: the
    last line of defence behind ``init_app``'s refusal of such a key."""
    import requests

    from flask_keen_signup._http import NoResponse
    from flask_keen_signup._http import send

    def bad_auth(prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        prepared.headers["Authorization"] = WRITE_KEY + "\nline2"
        return prepared

    with requests.Session() as session:
        answer = send(session, "GET", keen.url + "/3.0", timeout=(2.0, 2.0), auth=bad_auth)
    assert isinstance(answer, NoResponse) and not answer.transient
    assert WRITE_KEY not in answer.reason and "ValueError" in answer.reason
