"""The Auth0 Management API client, against the Auth0 emulator over real HTTP on 127.0.0.1.

Waits are asserted through the injected ``sleep`` (what the client *asked* to wait), never by
measuring wall-clock time; the client never actually sleeps in these tests.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
import typing as t

import pytest
import requests

from flask_keen_signup.auth0 import ManagementClient
from flask_keen_signup.exceptions import Auth0APIError
from flask_keen_signup.exceptions import Auth0ConnectionError
from flask_keen_signup.exceptions import Auth0Error
from flask_keen_signup.testing import Auth0Emulator

#: Distinctive, so that a leak anywhere is found by a plain substring search.
M2M_SECRET = "m2m-secret-Zq9xVw3Kp7Lr2Tt8Hh4"
WRONG_SECRET = "wrong-secret-Yy5Nn1Bb6Cc0Dd3"


class Sleeps:
    """An injected ``sleep`` that records the waits asked for and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def emulator() -> t.Iterator[Auth0Emulator]:
    with Auth0Emulator(m2m_client_secret=M2M_SECRET) as emu:
        yield emu


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make_client(
    emulator: Auth0Emulator, sleeps: Sleeps
) -> t.Iterator[t.Callable[..., ManagementClient]]:
    clients: list[ManagementClient] = []

    def make(**kwargs: t.Any) -> ManagementClient:
        kwargs.setdefault("sleep", sleeps)
        client = ManagementClient(
            kwargs.pop("domain", emulator.url),
            kwargs.pop("client_id", emulator.m2m_client_id),
            kwargs.pop("client_secret", emulator.m2m_client_secret),
            **kwargs,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def offline_client() -> t.Iterator[ManagementClient]:
    """A client that never sends a request: for the parsers of responses and headers."""
    now = 1_700_000_000.0
    with ManagementClient("tenant.auth0.com", "id", M2M_SECRET, clock=lambda: now) as client:
        yield client


@pytest.fixture
def client(make_client: t.Callable[..., ManagementClient]) -> ManagementClient:
    return make_client()


def requests_to(emulator: Auth0Emulator, path: str, method: str | None = None) -> list[t.Any]:
    return [
        entry
        for entry in emulator.request_log
        if entry.path == path and (method is None or entry.method == method)
    ]


def token_requests(emulator: Auth0Emulator) -> list[t.Any]:
    return requests_to(emulator, "/oauth/token", "POST")


def api_requests(emulator: Auth0Emulator) -> list[t.Any]:
    return [entry for entry in emulator.request_log if entry.path.startswith("/api/v2/")]


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- construction -------------------------------------------------------------------------


def test_domain_and_default_audience() -> None:
    client = ManagementClient("tenant.eu.auth0.com", "id", "secret")
    try:
        assert client.base_url == "https://tenant.eu.auth0.com"
        assert client.audience == "https://tenant.eu.auth0.com/api/v2/"
    finally:
        client.close()
    client = ManagementClient("http://127.0.0.1:8080/", "id", "secret", audience="urn:x")
    try:
        assert client.base_url == "http://127.0.0.1:8080"
        assert client.audience == "urn:x"
    finally:
        client.close()


@pytest.mark.parametrize(
    "domain", ["", "tenant.auth0.com/api", "https://tenant.auth0.com/path", "ftp://x", "a b"]
)
def test_bad_domain_refused(domain: str) -> None:
    with pytest.raises(ValueError, match="domain"):
        ManagementClient(domain, "id", "secret")


def test_emulator_audience_is_the_default(
    client: ManagementClient, emulator: Auth0Emulator
) -> None:
    assert client.audience == emulator.audience


# -- token ----------------------------------------------------------------------------------


def test_token_fetched_once_and_cached(client: ManagementClient, emulator: Auth0Emulator) -> None:
    user = emulator.add_user(email="ada@example.com")
    for _ in range(3):
        assert client.get_user(user["user_id"])["email"] == "ada@example.com"
    client.update_app_metadata(user["user_id"], {"signedUp": True})
    assert len(token_requests(emulator)) == 1
    assert [e.status for e in api_requests(emulator)] == [200, 200, 200, 200]


def test_token_renewed_before_expiry(
    make_client: t.Callable[..., ManagementClient],
) -> None:
    with Auth0Emulator(m2m_client_secret=M2M_SECRET, token_lifetime=3600) as emulator:
        now = [time.time()]
        client = make_client(
            domain=emulator.url,
            client_id=emulator.m2m_client_id,
            client_secret=emulator.m2m_client_secret,
            clock=lambda: now[0],
            token_leeway=60,
        )
        user = emulator.add_user(email="ada@example.com")
        client.get_user(user["user_id"])
        assert len(token_requests(emulator)) == 1
        now[0] += 3600 - 61  # one second before the leeway starts: still cached
        client.get_user(user["user_id"])
        assert len(token_requests(emulator)) == 1
        now[0] += 2  # inside the leeway: renewed before Auth0 would refuse it
        client.get_user(user["user_id"])
        assert len(token_requests(emulator)) == 2
        client.get_user(user["user_id"])
        assert len(token_requests(emulator)) == 2


def test_lifetime_shorter_than_leeway_still_works(
    make_client: t.Callable[..., ManagementClient],
) -> None:
    # A token already inside the leeway when it arrives is used for the call that fetched
    # it, and renewed for the next one.
    with Auth0Emulator(m2m_client_secret=M2M_SECRET, token_lifetime=30) as emulator:
        client = make_client(
            domain=emulator.url,
            client_id=emulator.m2m_client_id,
            client_secret=emulator.m2m_client_secret,
            token_leeway=60,
        )
        user = emulator.add_user(email="ada@example.com")
        client.get_user(user["user_id"])
        client.get_user(user["user_id"])
        assert len(token_requests(emulator)) == 2
        assert [e.status for e in api_requests(emulator)] == [200, 200]


def test_concurrent_threads_make_one_token_request(
    client: ManagementClient, emulator: Auth0Emulator
) -> None:
    user = emulator.add_user(email="ada@example.com")
    barrier = threading.Barrier(8)
    results: list[dict[str, t.Any]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(client.get_user(user["user_id"], fields=["user_id"]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert len(results) == 8
    assert len(token_requests(emulator)) == 1
    assert len(api_requests(emulator)) == 8


def test_concurrent_threads_share_one_failed_token_request(
    make_client: t.Callable[..., ManagementClient], emulator: Auth0Emulator
) -> None:
    client = make_client(client_secret=WRONG_SECRET)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait(timeout=10)
            client.get_user("auth0|abc")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(errors) == 8
    assert all(isinstance(exc, Auth0APIError) and not exc.retryable for exc in errors)
    # Threads that waited while the one request failed get its answer, not a request each.
    # (A thread scheduled only after the failure was recorded may try once more.)
    assert 1 <= len(token_requests(emulator)) <= 2
    assert api_requests(emulator) == []


def test_revoked_token_is_renewed_once(client: ManagementClient, emulator: Auth0Emulator) -> None:
    user = emulator.add_user(email="ada@example.com")
    client.get_user(user["user_id"])
    emulator.revoke_m2m_tokens()
    assert client.get_user(user["user_id"])["user_id"] == user["user_id"]
    assert len(token_requests(emulator)) == 2
    assert [e.status for e in api_requests(emulator)] == [200, 401, 200]
    client.get_user(user["user_id"])
    assert len(token_requests(emulator)) == 2


def test_wrong_secret_is_permanent(
    make_client: t.Callable[..., ManagementClient], emulator: Auth0Emulator, sleeps: Sleeps
) -> None:
    client = make_client(client_secret=WRONG_SECRET)
    with pytest.raises(Auth0APIError) as info:
        client.get_user("auth0|abc")
    assert info.value.status_code in (401, 403)
    assert info.value.retryable is False
    assert info.value.error_code == "access_denied"
    assert len(token_requests(emulator)) == 1  # no retry, no "renewal"
    assert api_requests(emulator) == []
    assert sleeps.waits == []


# -- users ----------------------------------------------------------------------------------


def test_get_user_with_fields(client: ManagementClient, emulator: Auth0Emulator) -> None:
    user = emulator.add_user(email="ada@example.com", name="Ada", app_metadata={"plan": "pro"})
    got = client.get_user(user["user_id"], fields=["user_id", "app_metadata", "created_at"])
    (entry,) = api_requests(emulator)
    assert entry.query == "fields=user_id%2Capp_metadata%2Ccreated_at&include_fields=true"
    assert got["user_id"] == user["user_id"]
    assert got["app_metadata"] == {"plan": "pro"}
    assert got["created_at"] == user["created_at"]
    assert "email" not in got
    assert "name" not in got
    full = client.get_user(user["user_id"])
    assert full["email"] == "ada@example.com"
    assert full["name"] == "Ada"


def test_get_user_with_a_single_field_name(
    client: ManagementClient, emulator: Auth0Emulator
) -> None:
    # A bare string is one field name, not a sequence of one-letter fields.
    user = emulator.add_user(email="ada@example.com", app_metadata={"plan": "pro"})
    got = client.get_user(user["user_id"], fields="app_metadata")
    assert got == {"app_metadata": {"plan": "pro"}}


@pytest.mark.parametrize(
    ("user_id", "encoded"),
    [
        ("auth0|abc123", "auth0%7Cabc123"),
        ("samlp|corp|ada@example.com", "samlp%7Ccorp%7Cada%40example.com"),
        ("email|6123/x", "email%7C6123%2Fx"),
        ("oidc|a b?c#d%e", "oidc%7Ca%20b%3Fc%23d%25e"),
    ],
)
def test_user_ids_are_encoded_and_round_trip(
    client: ManagementClient, emulator: Auth0Emulator, user_id: str, encoded: str
) -> None:
    emulator.add_user(email="ada@example.com", user_id=user_id)
    assert client.get_user(user_id)["user_id"] == user_id
    updated = client.update_app_metadata(user_id, {"signedUp": True})
    assert updated["user_id"] == user_id
    assert emulator.get_user(user_id)["app_metadata"] == {"signedUp": True}  # type: ignore[index]
    paths = [e.path for e in api_requests(emulator)]
    assert paths == [f"/api/v2/users/{encoded}"] * 2


def test_empty_user_id_refused(client: ManagementClient, emulator: Auth0Emulator) -> None:
    # quote("") == "": the request would go to the user listing instead.
    with pytest.raises(ValueError):
        client.get_user("")
    with pytest.raises(ValueError):
        client.update_app_metadata("", {"signedUp": True})
    assert emulator.request_log == []


def test_patch_merges_at_the_top_level(client: ManagementClient, emulator: Auth0Emulator) -> None:
    user = emulator.add_user(
        email="ada@example.com",
        app_metadata={"plan": "pro", "nested": {"a": 1, "b": 2}, "old": "x"},
    )
    updated = client.update_app_metadata(
        user["user_id"], {"signedUp": True, "nested": {"a": 3}, "old": None}
    )
    expected = {"plan": "pro", "nested": {"a": 3}, "signedUp": True}
    assert updated["app_metadata"] == expected
    assert emulator.get_user(user["user_id"])["app_metadata"] == expected  # type: ignore[index]
    # Repeating the same merge changes nothing.
    again = client.update_app_metadata(user["user_id"], {"signedUp": True})
    assert again["app_metadata"] == expected


def test_empty_mapping_refused(client: ManagementClient, emulator: Auth0Emulator) -> None:
    user = emulator.add_user(email="ada@example.com", app_metadata={"plan": "pro"})
    with pytest.raises(ValueError, match="empty app_metadata"):
        client.update_app_metadata(user["user_id"], {})
    assert api_requests(emulator) == []
    assert emulator.get_user(user["user_id"])["app_metadata"] == {"plan": "pro"}  # type: ignore[index]


def test_missing_user_is_inexistent_user(client: ManagementClient, emulator: Auth0Emulator) -> None:
    with pytest.raises(Auth0APIError) as info:
        client.get_user("auth0|nobody")
    assert info.value.status_code == 404
    assert info.value.error_code == "inexistent_user"
    assert info.value.retryable is False
    assert info.value.api_message
    assert len(api_requests(emulator)) == 1  # a permanent error is not retried


def test_iter_users_walks_every_page(client: ManagementClient, emulator: Auth0Emulator) -> None:
    added = {
        emulator.add_user(
            email=f"user{i}@example.com", created_at=f"2020-01-{i + 1:02d}T00:00:00Z"
        )["user_id"]
        for i in range(7)
    }
    emulator.clear_log()
    users = list(client.iter_users(per_page=3, fields=["user_id", "created_at"]))
    ids = [u["user_id"] for u in users]
    assert len(ids) == len(set(ids))
    assert added <= set(ids)
    assert all(set(u) <= {"user_id", "created_at"} for u in users)
    pages = requests_to(emulator, "/api/v2/users", "GET")
    assert len(pages) == math.ceil(len(ids) / 3)
    assert len(token_requests(emulator)) == 1


def test_iter_users_is_lazy(client: ManagementClient, emulator: Auth0Emulator) -> None:
    for i in range(5):
        emulator.add_user(email=f"user{i}@example.com")
    emulator.clear_log()
    users = client.iter_users(per_page=2)
    assert requests_to(emulator, "/api/v2/users") == []
    next(users)
    assert len(requests_to(emulator, "/api/v2/users")) == 1


@pytest.mark.parametrize("per_page", [0, 101])
def test_iter_users_per_page_bounds(client: ManagementClient, per_page: int) -> None:
    with pytest.raises(ValueError):
        client.iter_users(per_page=per_page)


# -- rate limits and retries ----------------------------------------------------------------


def test_429_waits_retry_after(
    client: ManagementClient, emulator: Auth0Emulator, sleeps: Sleeps
) -> None:
    user = emulator.add_user(email="ada@example.com")
    emulator.rate_limit_next(2, retry_after=3)
    assert client.get_user(user["user_id"])["user_id"] == user["user_id"]
    assert sleeps.waits == [3.0, 3.0]
    assert [e.status for e in api_requests(emulator)] == [429, 429, 200]


def test_429_waits_until_rate_limit_reset(
    make_client: t.Callable[..., ManagementClient], emulator: Auth0Emulator, sleeps: Sleeps
) -> None:
    user = emulator.add_user(email="ada@example.com")
    now = time.time()
    client = make_client(clock=lambda: now)
    emulator.rate_limit_next(1, reset_in=5)
    client.get_user(user["user_id"])
    assert len(sleeps.waits) == 1
    # x-ratelimit-reset is whole epoch seconds: the wait is reset_in give or take a second
    # (plus however long the emulator took to answer, as the client's clock is frozen).
    assert 3.5 < sleeps.waits[0] <= 7


def test_429_backs_off_with_jitter_without_a_usable_hint(
    make_client: t.Callable[..., ManagementClient], emulator: Auth0Emulator, sleeps: Sleeps
) -> None:
    user = emulator.add_user(email="ada@example.com")
    # The client's clock runs ahead, so x-ratelimit-reset is already in the past: no hint.
    client = make_client(clock=lambda: time.time() + 1000)
    emulator.rate_limit_next(3, reset_in=1)
    client.get_user(user["user_id"])
    assert len(sleeps.waits) == 3
    first, second, third = sleeps.waits
    assert 0.5 <= first <= 1.0
    assert 1.0 <= second <= 2.0
    assert 2.0 <= third <= 4.0


def test_every_wait_is_capped(
    make_client: t.Callable[..., ManagementClient], emulator: Auth0Emulator, sleeps: Sleeps
) -> None:
    user = emulator.add_user(email="ada@example.com")
    client = make_client(max_retry_wait=2.5)
    emulator.rate_limit_next(2, retry_after=120)
    client.get_user(user["user_id"])
    assert sleeps.waits == [2.5, 2.5]


def test_429_bounded_then_raised_as_retryable(
    make_client: t.Callable[..., ManagementClient], emulator: Auth0Emulator, sleeps: Sleeps
) -> None:
    user = emulator.add_user(email="ada@example.com")
    client = make_client(max_retries=2)
    emulator.rate_limit_next(10, retry_after=4)
    with pytest.raises(Auth0APIError) as info:
        client.get_user(user["user_id"])
    assert info.value.status_code == 429
    assert info.value.retryable is True
    assert info.value.retry_after == 4.0
    assert sleeps.waits == [4.0, 4.0]
    assert [e.status for e in api_requests(emulator)] == [429, 429, 429]


def test_429_without_hint_still_tells_the_caller_when_to_retry(
    make_client: t.Callable[..., ManagementClient], emulator: Auth0Emulator, sleeps: Sleeps
) -> None:
    user = emulator.add_user(email="ada@example.com")
    client = make_client(max_retries=0, clock=lambda: time.time() + 1000)
    emulator.rate_limit_next(1)
    with pytest.raises(Auth0APIError) as info:
        client.get_user(user["user_id"])
    assert info.value.retryable is True
    assert info.value.retry_after is not None and 0.5 <= info.value.retry_after <= 1.0
    assert sleeps.waits == []


# -- network errors -------------------------------------------------------------------------


def test_connection_refused(make_client: t.Callable[..., ManagementClient], sleeps: Sleeps) -> None:
    client = make_client(domain=f"http://127.0.0.1:{closed_port()}", max_retries=2)
    with pytest.raises(Auth0ConnectionError) as info:
        client.get_user("auth0|abc")
    assert info.value.retryable is True
    assert info.value.status_code is None
    assert "connection refused" in str(info.value)
    assert info.value.__cause__ is None  # requests' exception carries the request headers
    assert len(sleeps.waits) == 2


# -- error bodies (parsed from real requests.Response objects) --------------------------------


def response(
    status: int, body: bytes | str | dict[str, t.Any], headers: dict[str, str] | None = None
) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp.reason = "Reason"
    if isinstance(body, dict):
        body = json.dumps(body)
    resp._content = body.encode() if isinstance(body, str) else body
    resp.headers.update(headers or {})
    return resp


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (
            {
                "statusCode": 403,
                "error": "Forbidden",
                "message": "Insufficient scope, expected any of: read:users",
                "errorCode": "insufficient_scope",
            },
            "insufficient_scope",
            "Insufficient scope, expected any of: read:users",
        ),
        (
            {"statusCode": 400, "error": "Bad Request", "message": "Payload validation error"},
            "Bad Request",
            "Payload validation error",
        ),
        (
            {"error": "access_denied", "error_description": "Unauthorized"},
            "access_denied",
            "Unauthorized",
        ),
        ({"code": "invalid_body", "description": "x"}, "invalid_body", "Reason"),
        ({}, "403", "Reason"),
        (
            "<html><body>\n<h1>403\tForbidden</h1>\n</body></html>",
            "403",
            "403 Forbidden",  # a proxy's page: tags dropped, one line (_http.excerpt)
        ),
        (b"\xff\xfe not utf-8", "403", None),
    ],
)
def test_error_bodies(
    offline_client: ManagementClient, body: t.Any, code: str, message: str | None
) -> None:
    error = offline_client._error(response(403, body), None)
    assert error.status_code == 403
    assert error.error_code == code
    if message is not None:
        assert error.api_message == message
    assert "\n" not in str(error)
    assert error.retryable is False


def test_error_excerpt_is_short_and_redacted(offline_client: ManagementClient) -> None:
    body = f"echo client_secret={M2M_SECRET} token=tok-123 " + "x" * 5000
    error = offline_client._error(response(502, body), "tok-123")
    assert len(error.api_message) <= 200
    assert M2M_SECRET not in str(error)
    assert "tok-123" not in str(error)
    assert error.retryable is True


def test_retry_after_as_http_date(offline_client: ManagementClient) -> None:
    client = offline_client
    date = "Tue, 14 Nov 2023 22:13:40 GMT"  # 1_700_000_020
    assert client._server_wait(response(429, {}, {"Retry-After": date})) == pytest.approx(20)
    assert client._server_wait(response(429, {}, {"Retry-After": "garbage"})) is None
    assert client._server_wait(response(429, {}, {"Retry-After": "inf"})) is None
    assert client._server_wait(response(429, {}, {"Retry-After": "-5"})) == 0.0
    assert client._server_wait(
        response(429, {}, {"X-RateLimit-Reset": "1700000007"})
    ) == pytest.approx(7)
    assert client._server_wait(response(429, {}, {"X-RateLimit-Reset": "1699999999"})) is None


# -- secrets --------------------------------------------------------------------------------


def test_secrets_never_leak(
    make_client: t.Callable[..., ManagementClient],
    emulator: Auth0Emulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[Auth0Error] = []
    client = make_client()
    user = emulator.add_user(email="ada@example.com")
    client.get_user(user["user_id"], fields=["app_metadata"])
    client.update_app_metadata(user["user_id"], {"signedUp": True})
    first_token = client._tokens.current.value  # type: ignore[union-attr]
    emulator.revoke_m2m_tokens()
    client.get_user(user["user_id"])
    second_token = client._tokens.current.value  # type: ignore[union-attr]
    assert first_token != second_token
    emulator.rate_limit_next(5, retry_after=1)
    for call in (
        lambda: client.get_user(user["user_id"]),
        lambda: client.get_user("auth0|nobody"),
        lambda: make_client(client_secret=WRONG_SECRET).get_user("auth0|x"),
        lambda: make_client(domain=f"http://127.0.0.1:{closed_port()}").get_user("auth0|x"),
    ):
        with pytest.raises(Auth0Error) as info:
            call()
        errors.append(info.value)
    assert len(errors) == 4

    secrets = [M2M_SECRET, WRONG_SECRET, first_token, second_token]
    texts = [caplog.text, repr(client), str(client)]
    texts += [m.getMessage() for m in caplog.records]
    for exc in errors:
        texts += [str(exc), repr(exc), repr(vars(exc))]
    texts += [f"{e.path}?{e.query}" for e in emulator.request_log]
    for secret in secrets:
        for text in texts:
            assert secret not in text
    assert any("Auth0" in m.getMessage() for m in caplog.records)  # it did log


# -- no secret anywhere in an error's chain -------------------------------------------------


class ScriptedServer:
    """A real HTTP server on 127.0.0.1 answering each path with a scripted response, for the
    failures the emulator does not produce: non-JSON bodies, a body cut off mid-stream, a
    server that never answers. ``{base}`` in a body is replaced by the server's URL."""

    def __init__(self, routes: dict[str, tuple[int, str, str]]) -> None:
        import http.server

        self.routes = routes
        server_self = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: t.Any) -> None:
                pass

            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                route = server_self.routes.get(path) or server_self.routes.get(
                    path.rsplit("/", 1)[0] + "/*"
                )
                if route is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                status, kind, body = route
                data = body.replace("{base}", server_self.url).encode()
                if kind == "hang":
                    time.sleep(2)
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                if kind == "cut":
                    self.send_header("Content-Length", str(len(data) * 4))
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = answer  # noqa: N815

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def chain_of(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception reachable through ``__cause__`` and ``__context__``."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        link = todo.pop()
        if link is None or any(link is s for s in seen):
            continue
        seen.append(link)
        todo += [link.__cause__, link.__context__]
    return seen


def assert_no_secret_in_chain(exc: BaseException, secrets: list[str]) -> None:
    for link in chain_of(exc):
        texts = [str(link), repr(link), repr(link.args), repr(vars(link))]
        request = getattr(link, "request", None)
        if request is not None:
            texts += [repr(getattr(request, "body", "")), repr(getattr(request, "headers", ""))]
            texts += [str(getattr(request, "url", ""))]
        assert not isinstance(link, requests.RequestException), (
            f"{type(exc).__name__} chains a requests exception carrying the request"
        )
        for secret in secrets:
            for text in texts:
                assert secret not in text, f"a secret in {type(link).__name__} of the chain"


TOKEN_BODY = json.dumps({"access_token": "tok-scripted-Aa1Bb2Cc3", "expires_in": 86400})
JOB = json.dumps({"id": "job_abcdefghijklmnop", "status": "pending", "type": "users_export"})
DONE = json.dumps(
    {"id": "job_abcdefghijklmnop", "status": "completed", "location": "{base}/file.json.gz"}
)


def test_no_error_chain_reaches_a_secret(
    make_client: t.Callable[..., ManagementClient], emulator: Auth0Emulator
) -> None:
    import gzip

    errors: dict[str, BaseException] = {}
    tokens: list[str] = ["tok-scripted-Aa1Bb2Cc3"]

    def capture(name: str, call: t.Callable[[], object]) -> None:
        with pytest.raises(Auth0Error) as info:
            call()
        errors[name] = info.value

    port = closed_port()
    capture(
        "connection refused",
        lambda: make_client(domain=f"http://127.0.0.1:{port}").get_user("auth0|x"),
    )
    capture(
        "token endpoint refuses",
        lambda: make_client(client_secret=WRONG_SECRET).get_user("auth0|x"),
    )

    live = make_client()
    live.count_users()
    tokens.append(live._tokens.current.value)  # type: ignore[union-attr]
    emulator.rate_limit_next(100)
    capture("429 exhausted", lambda: live.count_users())
    emulator.rate_limit_next(0)
    emulator.export_link_lifetime = -1
    capture("export link expired", lambda: list(live.export_users(["user_id"])))
    emulator.fail_next_export("failed")
    emulator.export_link_lifetime = 60
    capture("export job failed", lambda: list(live.export_users(["user_id"])))

    lines = "".join(json.dumps({"user_id": f"auth0|{n}"}) + "\n" for n in range(5000))
    gz = gzip.compress(lines.encode()).decode("latin-1")
    routes = {
        "/oauth/token": (200, "json", TOKEN_BODY),
        "/api/v2/users": (200, "json", "<html>not json</html>"),
        "/api/v2/users/*": (401, "json", '{"statusCode": 401, "message": "Invalid token"}'),
        "/api/v2/jobs/users-exports": (201, "json", JOB),
        "/api/v2/jobs/*": (200, "json", DONE),
        "/file.json.gz": (200, "cut", gz[: len(gz) // 2]),
    }
    with ScriptedServer(routes) as scripted:
        scripted_client = make_client(domain=scripted.url, max_retries=1)
        capture("bad JSON", lambda: scripted_client.count_users())
        capture("401 twice", lambda: scripted_client.get_user("auth0|x"))
        capture("download cut off", lambda: list(scripted_client.export_users(["user_id"])))
        routes["/oauth/token"] = (200, "json", "not json")
        capture("token not JSON", lambda: make_client(domain=scripted.url).get_user("auth0|x"))
        routes["/oauth/token"] = (500, "json", "boom")
        capture(
            "token endpoint 500",
            lambda: make_client(domain=scripted.url, max_retries=0).get_user("a"),
        )
        routes["/oauth/token"] = (200, "json", TOKEN_BODY)
        routes["/file.json.gz"] = (200, "hang", "")
        capture(
            "download timeout",
            lambda: list(
                make_client(domain=scripted.url, timeout=(1, 0.3), max_retries=0).export_users(
                    ["user_id"]
                )
            ),
        )
        routes["/api/v2/users"] = (200, "hang", "")
        capture(
            "read timeout",
            lambda: make_client(domain=scripted.url, timeout=(1, 0.3), max_retries=0).count_users(),
        )

    assert "cut off after" in str(errors["download cut off"])
    assert "read timed out after 0.3s" in str(errors["read timeout"])
    assert "not JSON" in str(errors["bad JSON"])
    assert len(errors) == 12
    for name, exc in errors.items():
        try:
            assert_no_secret_in_chain(exc, [M2M_SECRET, WRONG_SECRET, *tokens])
        except AssertionError as failure:
            raise AssertionError(f"{name}: {failure}") from None
