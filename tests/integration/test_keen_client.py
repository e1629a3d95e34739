"""The Keen write client, over real HTTP against the Keen emulator on 127.0.0.1.

A few shapes no real-looking Keen produces (a 200 batch answer that is not Keen's) come from
a deliberately broken WSGI app; everything else goes through :class:`KeenEmulator`.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import json
import logging
import socket
import time
import typing as t

import pytest
import requests

from flask_keen_signup.exceptions import KeenAPIError
from flask_keen_signup.exceptions import KeenConnectionError
from flask_keen_signup.exceptions import KeenError
from flask_keen_signup.exceptions import KeenRequestTooLargeError
from flask_keen_signup.keen import MAX_REQUEST_BYTES
from flask_keen_signup.keen import MAX_RETRY_AFTER
from flask_keen_signup.keen import PERMANENT_EVENT_ERRORS
from flask_keen_signup.keen import BatchResult
from flask_keen_signup.keen import EventResult
from flask_keen_signup.keen import KeenClient
from flask_keen_signup.keen import Outcome
from flask_keen_signup.keen import assemble_batch
from flask_keen_signup.keen import encode_batch
from flask_keen_signup.keen import encode_event
from flask_keen_signup.keen import parse_retry_after
from flask_keen_signup.keen import split_by_size
from flask_keen_signup.testing._server import ThreadedServer
from flask_keen_signup.testing.keen import KeenEmulator

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIEnvironment

PROJECT = "proj-1"
KEY = "wk-SECRET-7f3a9c1e-do-not-leak"


@pytest.fixture
def keen() -> t.Iterator[KeenEmulator]:
    with KeenEmulator(project_id=PROJECT, write_key=KEY) as emulator:
        yield emulator


@pytest.fixture
def client(keen: KeenEmulator) -> t.Iterator[KeenClient]:
    with KeenClient(PROJECT, KEY, api_url=keen.url, timeout=(2.0, 5.0)) as c:
        yield c


def signup(n: int, **extra: t.Any) -> dict[str, t.Any]:
    return {"userId": f"auth0|{n}", "name": f"User {n}", **extra}


def header(entry: t.Any, name: str) -> str | None:
    for key, value in dict(entry.headers).items():
        if key.lower() == name.lower():
            return str(value)
    return None


# --------------------------------------------------------------------------- writes


@pytest.mark.parametrize(
    ("collection", "encoded"),
    [("signups", "signups"), ("sign ups", "sign%20ups"), ("a/b", "a%2Fb")],
)
def test_single_write_lands_with_path_headers_and_body(
    keen: KeenEmulator, client: KeenClient, collection: str, encoded: str
) -> None:
    event = signup(1, note="héllo ✓")
    client.add_event(collection, event)

    stored = keen.events(collection)
    assert len(stored) == 1
    assert stored[0]["userId"] == "auth0|1" and stored[0]["note"] == "héllo ✓"
    (entry,) = keen.request_log
    assert entry.method == "POST"
    assert entry.status == 201
    assert client.event_url(collection).endswith(f"/3.0/projects/{PROJECT}/events/{encoded}")
    assert entry.path in (
        f"/3.0/projects/{PROJECT}/events/{encoded}",
        f"/3.0/projects/{PROJECT}/events/{collection}",  # if the log stores the decoded path
    )
    assert header(entry, "Authorization") == KEY
    assert header(entry, "Content-Type") == "application/json"
    assert (header(entry, "Keen-Sdk") or "").startswith("flask-keen-signup-")
    assert (header(entry, "User-Agent") or "").startswith("flask-keen-signup/")
    assert entry.body == encode_event(event)
    assert b" " not in entry.body.replace(b"User 1", b"").replace("héllo ✓".encode(), b"")


def test_batch_write_lands_in_two_collections(keen: KeenEmulator, client: KeenClient) -> None:
    batch = {"signups": [signup(1), signup(2)], "sign ups": [signup(3)]}
    result = client.add_events(batch)

    assert result.all_delivered and result.delivered_count == 3 and len(result) == 3
    assert result.results == {
        "signups": [EventResult(Outcome.DELIVERED)] * 2,
        "sign ups": [EventResult(Outcome.DELIVERED)],
    }
    assert [e["userId"] for e in keen.events("signups")] == ["auth0|1", "auth0|2"]
    assert [e["userId"] for e in keen.events("sign ups")] == ["auth0|3"]
    (entry,) = keen.request_log
    assert entry.path == f"/3.0/projects/{PROJECT}/events"
    assert entry.status == 200
    assert entry.body == encode_batch(batch)
    assert result.request_bytes == len(entry.body)
    assert header(entry, "Authorization") == KEY
    assert header(entry, "Content-Type") == "application/json"


def test_batch_with_a_prebuilt_body(keen: KeenEmulator, client: KeenClient) -> None:
    batch = {"signups": [signup(1), signup(2)]}
    body = assemble_batch({"signups": [encode_event(e) for e in batch["signups"]]})
    assert body == encode_batch(batch)

    result = client.add_events(batch, body=body)

    assert result.all_delivered and result.request_bytes == len(body)
    assert keen.request_log[-1].body == body


def test_batch_partial_failure_is_classified_per_event_in_input_order(
    keen: KeenEmulator, client: KeenClient
) -> None:
    batch = {
        "signups": [
            signup(1),
            signup(2, **{"bad.name": 1}),
            signup(3),
            signup(4, long="x" * 10_000),
        ],
        "logins": [signup(5, **{"$dollar": 1}), signup(6)],
    }
    result = client.add_events(batch)

    outcomes = {c: [r.outcome for r in rs] for c, rs in result.results.items()}
    assert outcomes == {
        "signups": [Outcome.DELIVERED, Outcome.PERMANENT, Outcome.DELIVERED, Outcome.PERMANENT],
        "logins": [Outcome.PERMANENT, Outcome.DELIVERED],
    }
    assert result.results["signups"][1].error_name == "InvalidPropertyNameError"
    assert "bad.name" in (result.results["signups"][1].description or "")
    assert result.results["signups"][3].error_name == "InvalidPropertyValueError"
    assert result.results["logins"][0].error_name == "InvalidPropertyNameError"
    assert result.delivered_count == 3
    assert result.count(Outcome.PERMANENT) == 3
    assert result.indices(Outcome.PERMANENT) == {"signups": [1, 3], "logins": [0]}
    assert result.indices(Outcome.RETRYABLE) == {}
    assert [(c, i) for c, i, _ in result.failed] == [("signups", 1), ("signups", 3), ("logins", 0)]
    assert [e["userId"] for e in keen.events("signups")] == ["auth0|1", "auth0|3"]
    assert [e["userId"] for e in keen.events("logins")] == ["auth0|6"]


@pytest.mark.parametrize("duplicate_response", ["created", "error"])
def test_duplicate_uniqueness_token_counts_as_delivered(duplicate_response: str) -> None:
    token = "a" * 64
    with KeenEmulator(
        project_id=PROJECT, write_key=KEY, duplicate_token_response=duplicate_response
    ) as keen:
        with KeenClient(PROJECT, KEY, api_url=keen.url) as client:
            client.add_event("signups", signup(1, keen={"uniqueness_token": token}))
            client.add_event("signups", signup(1, keen={"uniqueness_token": token}))
            result = client.add_events(
                {"signups": [signup(1, keen={"uniqueness_token": token}), signup(2)]}
            )
        assert result.all_delivered
        assert len(keen.events("signups")) == 2
        assert keen.duplicates_rejected == 2
        if duplicate_response == "error":
            assert keen.request_log[1].status == 409
            assert result.results["signups"][0].error_name == "DuplicateEventError"


def test_permanent_event_errors_cover_the_sdk_list() -> None:
    assert {
        "InvalidCollectionNameError",
        "InvalidPropertyNameError",
        "InvalidPropertyValueError",
    } <= PERMANENT_EVENT_ERRORS
    assert "InternalServerError" not in PERMANENT_EVENT_ERRORS


def test_one_client_shared_by_threads(keen: KeenEmulator) -> None:
    with KeenClient(PROJECT, KEY, api_url=keen.url, pool_maxsize=4) as client:

        def send(n: int) -> None:
            if n % 2:
                client.add_event("signups", signup(n))
            else:
                assert client.add_events({"signups": [signup(n)]}).all_delivered

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(send, range(64)))

    assert sorted(e["userId"] for e in keen.events("signups")) == sorted(
        f"auth0|{n}" for n in range(64)
    )


def test_given_session_is_used_and_left_open(keen: KeenEmulator) -> None:
    session = requests.Session()
    client = KeenClient(PROJECT, KEY, api_url=keen.url + "/", session=session, user_agent="me/1")
    client.add_event("signups", signup(1))
    client.close()
    assert header(keen.request_log[-1], "User-Agent") == "me/1"
    assert session.adapters  # still usable: close() did not touch it
    KeenClient(PROJECT, KEY, api_url=keen.url, session=session).add_event("signups", signup(2))
    assert len(keen.events("signups")) == 2
    session.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": (0, 5)},
        {"timeout": (1, float("inf"))},
        {"api_url": "api.keen.io"},
        {"api_url": "ftp://api.keen.io"},
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, t.Any]) -> None:
    with pytest.raises(ValueError):
        KeenClient(PROJECT, KEY, **kwargs)
    with pytest.raises(ValueError):
        KeenClient("", KEY)
    with pytest.raises(ValueError):
        KeenClient(PROJECT, "")


def test_repr_shows_project_and_url_only() -> None:
    client = KeenClient(PROJECT, KEY, api_url="http://127.0.0.1:1")
    assert repr(client) == f"<KeenClient project_id='{PROJECT}' api_url='http://127.0.0.1:1'>"


# --------------------------------------------------------------------------- whole-request faults


@pytest.mark.parametrize("status", [500, 502, 503, 504])
@pytest.mark.parametrize("batch", [False, True])
def test_5xx_is_retryable(keen: KeenEmulator, client: KeenClient, status: int, batch: bool) -> None:
    keen.fail_next(1, status)
    with pytest.raises(KeenAPIError) as info:
        if batch:
            client.add_events({"signups": [signup(1)]})
        else:
            client.add_event("signups", signup(1))
    assert info.value.retryable is True
    assert info.value.status_code == status
    assert info.value.retry_after is None
    assert not isinstance(info.value, KeenRequestTooLargeError)
    # the fault was one-off: the same call now succeeds
    client.add_event("signups", signup(1))
    assert len(keen.events("signups")) == 1


def test_408_is_retryable(keen: KeenEmulator, client: KeenClient) -> None:
    keen.fail_next(1, 408)
    with pytest.raises(KeenAPIError) as info:
        client.add_event("signups", signup(1))
    assert info.value.retryable and info.value.status_code == 408


def test_429_with_retry_after_seconds(keen: KeenEmulator, client: KeenClient) -> None:
    keen.fail_next(1, 429, retry_after=7)
    with pytest.raises(KeenAPIError) as info:
        client.add_events({"signups": [signup(1)]})
    assert info.value.retryable and info.value.status_code == 429
    assert info.value.retry_after == 7.0


def test_429_with_retry_after_http_date(keen: KeenEmulator, client: KeenClient) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    keen.fail_next(1, 429, retry_after=when)
    with pytest.raises(KeenAPIError) as info:
        client.add_event("signups", signup(1))
    assert info.value.retryable and info.value.status_code == 429
    assert info.value.retry_after is not None and 60 < info.value.retry_after <= 120


def test_retry_after_parsing() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after(" 3 ") == 3.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("86400") == MAX_RETRY_AFTER
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    far = email.utils.formatdate(time.time() + 10 * 86400, usegmt=True)
    assert parse_retry_after(far) == MAX_RETRY_AFTER


def test_400_is_permanent_with_keens_error_code(client: KeenClient) -> None:
    with pytest.raises(KeenAPIError) as info:
        client.add_event("signups", signup(1, **{"bad.name": 1}))
    assert info.value.retryable is False and info.value.status_code == 400
    assert info.value.error_code == "InvalidPropertyNameError"
    assert "bad.name" in info.value.api_message


def test_401_wrong_key_is_permanent(keen: KeenEmulator) -> None:
    with KeenClient(PROJECT, "not-the-key", api_url=keen.url) as client:
        with pytest.raises(KeenAPIError) as info:
            client.add_event("signups", signup(1))
    assert info.value.retryable is False and info.value.status_code == 401
    assert info.value.error_code == "InvalidApiKeyError"


def test_404_unknown_project_is_permanent(keen: KeenEmulator) -> None:
    with KeenClient("no-such-project", KEY, api_url=keen.url) as client:
        with pytest.raises(KeenAPIError) as info:
            client.add_events({"signups": [signup(1)]})
    assert info.value.retryable is False and info.value.status_code == 404
    assert info.value.error_code == "ResourceNotFoundError"


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404])
def test_injected_4xx_is_permanent(keen: KeenEmulator, client: KeenClient, status: int) -> None:
    keen.fail_next(1, status)
    with pytest.raises(KeenAPIError) as info:
        client.add_event("signups", signup(1))
    assert info.value.retryable is False and info.value.status_code == status
    assert info.value.retry_after is None
    assert info.value.error_code  # Keen's name, or the status as a string


def test_413_injected_is_too_large_with_request_bytes(
    keen: KeenEmulator, client: KeenClient
) -> None:
    batch = {"signups": [signup(n) for n in range(5)]}
    keen.fail_next(1, 413)
    with pytest.raises(KeenRequestTooLargeError) as info:
        client.add_events(batch)
    assert info.value.status_code == 413 and info.value.retryable is False
    assert info.value.request_bytes == len(encode_batch(batch))


def test_413_for_a_real_oversize_event(client: KeenClient) -> None:
    event = signup(1, chunks=["x" * 9_000] * 110)  # ~1 MB: over Keen's 900 kB event cap
    with pytest.raises(KeenRequestTooLargeError) as info:
        client.add_event("signups", event)
    assert info.value.request_bytes == len(encode_event(event))


# An HTML page is never Keen's verdict (a proxy in front of it): retried, even a 404.
@pytest.mark.parametrize(("status", "retryable"), [(502, True), (404, True), (503, True)])
def test_html_error_page(
    keen: KeenEmulator, client: KeenClient, status: int, retryable: bool
) -> None:
    keen.fail_next(1, status, html=True)
    with pytest.raises(KeenAPIError) as info:
        client.add_events({"signups": [signup(1)]})
    error = info.value
    assert error.status_code == status and error.retryable is retryable
    assert error.error_code == str(status)
    assert "<" not in error.api_message and "\n" not in error.api_message
    assert 0 < len(error.api_message) <= 300
    assert "not a Keen error body" in error.api_message


def test_connection_reset_is_a_connection_error(keen: KeenEmulator, client: KeenClient) -> None:
    keen.reset_next(1)
    with pytest.raises(KeenConnectionError) as info:
        client.add_event("signups", signup(1))
    assert info.value.retryable is True and info.value.status_code is None
    client.add_event("signups", signup(1))  # the pool recovers on its own
    assert len(keen.events("signups")) == 1


def test_down_is_a_connection_error(keen: KeenEmulator, client: KeenClient) -> None:
    keen.set_down(True)
    with pytest.raises(KeenConnectionError) as info:
        client.add_events({"signups": [signup(1)]})
    assert info.value.retryable is True
    keen.set_down(False)
    assert client.add_events({"signups": [signup(1)]}).all_delivered


def test_nothing_listening_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with KeenClient(PROJECT, KEY, api_url=f"http://127.0.0.1:{port}") as client:
        with pytest.raises(KeenConnectionError) as info:
            client.add_event("signups", signup(1))
    assert "refused" in str(info.value) or "failed" in str(info.value)


def test_read_timeout_is_a_connection_error(keen: KeenEmulator) -> None:
    keen.add_latency(1.0, count=1)
    with KeenClient(PROJECT, KEY, api_url=keen.url, timeout=(2.0, 0.2)) as client:
        with pytest.raises(KeenConnectionError) as info:
            client.add_event("signups", signup(1))
    assert info.value.retryable is True
    assert "read timed out" in str(info.value)


# --------------------------------------------------------------------------- sizes


def test_encode_event_is_compact_utf8() -> None:
    assert encode_event({"a": 1, "b": "é"}) == '{"a":1,"b":"é"}'.encode()
    with pytest.raises(ValueError):
        encode_event({"a": float("nan")})
    with pytest.raises(TypeError):
        encode_event({"a": object()})


@pytest.mark.parametrize("cap", [400, 1_000, 4_096, 50_000])
def test_split_by_size_keeps_every_chunk_under_the_cap(cap: int) -> None:
    events = [encode_event(signup(n, pad="é" * (n * 7 % 300))) for n in range(120)]
    chunks = split_by_size(events, cap)

    assert [i for chunk in chunks for i in chunk] == list(range(len(events)))
    for chunk in chunks:
        body = assemble_batch({"c" * 64: [events[i] for i in chunk]})
        assert len(body) <= cap or len(chunk) == 1


def test_split_by_size_edge_cases() -> None:
    assert split_by_size([]) == []
    big, small = b"x" * 5_000, b"{}"
    assert split_by_size([small, big, small], 1_000) == [range(0, 1), range(1, 2), range(2, 3)]
    assert split_by_size([small] * 7, max_events=3) == [range(0, 3), range(3, 6), range(6, 7)]
    assert split_by_size([small] * 7) == [range(0, 7)]
    with pytest.raises(ValueError):
        split_by_size([small], 0)
    with pytest.raises(ValueError):
        split_by_size([small], max_events=0)


def test_a_413d_batch_is_split_and_delivered(keen: KeenEmulator, client: KeenClient) -> None:
    events = [signup(n) for n in range(40)]
    encoded = [encode_event(e) for e in events]
    keen.fail_next(1, 413)
    with pytest.raises(KeenRequestTooLargeError) as info:
        client.add_events({"signups": events}, body=assemble_batch({"signups": encoded}))

    parts = split_by_size(encoded, max_bytes=info.value.request_bytes // 2)
    assert len(parts) >= 2
    for part in parts:
        body = assemble_batch({"signups": [encoded[i] for i in part]})
        assert len(body) <= info.value.request_bytes // 2
        assert client.add_events({"signups": [events[i] for i in part]}, body=body).all_delivered
    assert [e["userId"] for e in keen.events("signups")] == [e["userId"] for e in events]


def test_a_batch_over_keens_real_cap_is_refused_then_delivered_in_parts(
    keen: KeenEmulator, client: KeenClient
) -> None:
    events = [signup(n, chunks=["y" * 9_000] * 50) for n in range(24)]  # ~450 kB each, ~11 MB
    encoded = [encode_event(e) for e in events]
    body = assemble_batch({"signups": encoded})
    assert len(body) > MAX_REQUEST_BYTES
    with pytest.raises(KeenRequestTooLargeError):
        client.add_events({"signups": events}, body=body)

    for part in split_by_size(encoded):
        batch = {"signups": [events[i] for i in part]}
        assert client.add_events(batch).all_delivered
    assert len(keen.events("signups")) == len(events)


# --------------------------------------------------------------------------- broken Keen


class BrokenKeen:
    """A deliberately broken Keen: answers every batch with a canned 200 body.

    Only for answer shapes the emulator cannot produce (it is faithful to Keen).
    """

    def __init__(self) -> None:
        self.body: bytes = b""

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"].read(length)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [self.body]


@pytest.fixture
def broken() -> t.Iterator[tuple[BrokenKeen, KeenClient]]:
    app = BrokenKeen()
    with ThreadedServer(app) as server:
        with KeenClient(PROJECT, KEY, api_url=server.url) as client:
            yield app, client


TWO = {"a": [signup(1), signup(2)], "b": [signup(3)]}


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>OK</html>", b"not json", b"[]", b"null", b'"ok"', b"{broken"],
)
def test_unreadable_2xx_batch_answer_makes_every_event_retryable(
    broken: tuple[BrokenKeen, KeenClient], body: bytes
) -> None:
    app, client = broken
    app.body = body
    result = client.add_events(TWO)
    assert [len(rs) for rs in result.results.values()] == [2, 1]
    for rs in result.results.values():
        for r in rs:
            assert r.outcome is Outcome.RETRYABLE and "without a JSON object" in (
                r.description or ""
            )


def test_malformed_2xx_batch_answers_never_lose_events(
    broken: tuple[BrokenKeen, KeenClient],
) -> None:
    app, client = broken
    answers: list[tuple[t.Any, dict[str, list[Outcome]]]] = [
        # collection "b" missing
        ({"a": [{"success": True}, {"success": True}]}, {"a": [Outcome.DELIVERED] * 2,
                                                        "b": [Outcome.RETRYABLE]}),
        # fewer, or more, results than events: results pair by position only, so none
        # pairs and every event of that collection is sent again (issue 16)
        ({"a": [{"success": True}], "b": [{"success": True}, {"success": True}]},
         {"a": [Outcome.RETRYABLE] * 2, "b": [Outcome.RETRYABLE]}),
        # non-dict items, success not a boolean, results not a list
        ({"a": ["ok", {"success": "true"}], "b": {"success": True}},
         {"a": [Outcome.RETRYABLE] * 2, "b": [Outcome.RETRYABLE]}),
        # failures: unknown name, no error object, permanent name
        ({"a": [{"success": False, "error": {"name": "InternalServerError"}},
                {"success": False}],
          "b": [{"success": False, "error": {"name": "InvalidCollectionNameError",
                                             "description": "bad"}}]},
         {"a": [Outcome.RETRYABLE, Outcome.RETRYABLE], "b": [Outcome.PERMANENT]}),
    ]  # fmt: skip
    for answer, expected in answers:
        app.body = json.dumps(answer).encode()
        result = client.add_events(TWO)
        assert {c: [r.outcome for r in rs] for c, rs in result.results.items()} == expected
        for rs in result.results.values():
            for r in rs:
                if r.outcome is Outcome.RETRYABLE and r.error_name is None:
                    assert r.description, "an unclear result must say why"


def test_batch_result_helpers() -> None:
    r = BatchResult(
        results={
            "a": [EventResult(Outcome.DELIVERED), EventResult(Outcome.RETRYABLE, "X")],
            "b": [EventResult(Outcome.PERMANENT, "InvalidPropertyNameError")],
        },
        request_bytes=10,
    )
    assert len(r) == 3 and r.delivered_count == 1 and not r.all_delivered
    assert r.indices(Outcome.RETRYABLE) == {"a": [1]}
    assert r.indices(Outcome.PERMANENT) == {"b": [0]}
    assert r.count(Outcome.PERMANENT) == 1
    assert [(c, i) for c, i, _ in r.failed] == [("a", 1), ("b", 0)]
    assert EventResult(Outcome.DELIVERED).delivered


# --------------------------------------------------------------------------- secrets


def _all_text(exc: BaseException) -> str:
    """Everything an exception exposes: str, repr, attributes, and its whole chain."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(vars(current)), repr(current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def test_write_key_never_leaks(keen: KeenEmulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    raised: list[KeenError] = []

    def attempt(client: KeenClient, batch: bool = False) -> None:
        try:
            if batch:
                client.add_events({"signups": [signup(1), signup(2, **{"bad.name": 1})]})
            else:
                client.add_event("a/b c", signup(1))
        except KeenError as exc:
            raised.append(exc)
            assert exc.__cause__ is None and exc.__context__ is None

    with KeenClient(PROJECT, KEY, api_url=keen.url, timeout=(2.0, 0.2)) as client:
        assert KEY not in repr(client) and KEY not in str(client)
        attempt(client)
        attempt(client, batch=True)
        for status in (400, 401, 402, 403, 404, 408, 413, 429, 500, 502, 503, 504):
            for batch in (False, True):
                keen.fail_next(1, status, retry_after=3 if status == 429 else None)
                attempt(client, batch)
                keen.fail_next(1, status, html=True)
                attempt(client, batch)
        keen.reset_next(1)
        attempt(client)
        keen.add_latency(1.0, count=1)
        attempt(client)
        keen.set_down(True)
        attempt(client)
        attempt(client, batch=True)
        keen.set_down(False)
    with KeenClient("no-such-project", KEY, api_url=keen.url) as other:
        attempt(other)
    with KeenClient(PROJECT, KEY + "-wrong", api_url=keen.url) as wrong:
        attempt(wrong)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with KeenClient(PROJECT, KEY, api_url=f"http://127.0.0.1:{port}") as closed:
        attempt(closed)

    kinds = {type(e) for e in raised}
    assert kinds == {KeenAPIError, KeenRequestTooLargeError, KeenConnectionError}
    assert len(raised) >= 50
    for exc in raised:
        assert KEY not in _all_text(exc), exc
    assert KEY not in caplog.text
    for record in caplog.records:
        assert KEY not in record.getMessage()
    assert keen.request_log, "the emulator saw the requests"
    for entry in keen.request_log:
        assert KEY not in entry.path
        assert KEY not in json.dumps(entry.query)
        assert "api_key" not in entry.query
