"""The HTTP plumbing the Keen and Auth0 clients share (``flask_keen_signup._http``).

The clients' own tests (test_keen_client.py, test_auth0_client.py, the secret-chain tests)
cover these pieces through the clients; here each piece is pinned down once, and what
the clients now have in common (one wait cap, one redaction rule, one error base) is
checked through both of them, over real HTTP against the emulators.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import socket
import typing as t

import pytest
import requests

from flask_keen_signup import _http
from flask_keen_signup.auth0 import ManagementClient
from flask_keen_signup.exceptions import Auth0APIError
from flask_keen_signup.exceptions import KeenAPIError
from flask_keen_signup.exceptions import RemoteAPIError
from flask_keen_signup.exceptions import RemoteError
from flask_keen_signup.keen import KeenClient
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

NOW = 1_700_000_000.0
SECRET = "secret-Qw8Er5Ty2Ui9Op4"


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- waits ------------------------------------------------------------------------------


def test_server_wait_reads_retry_after_then_rate_limit_reset() -> None:
    assert _http.server_wait({}, now=NOW) is None
    assert _http.server_wait({"Retry-After": "7"}, now=NOW) == 7.0
    date = email.utils.formatdate(NOW + 20, usegmt=True)
    assert _http.server_wait({"Retry-After": date}, now=NOW) == pytest.approx(20)
    assert _http.server_wait({"X-RateLimit-Reset": str(int(NOW) + 5)}, now=NOW) == 5.0
    both = {"Retry-After": "2", "X-RateLimit-Reset": str(int(NOW) + 50)}
    assert _http.server_wait(both, now=NOW) == 2.0  # Retry-After wins
    # A reset already past says nothing about when one more request is allowed.
    assert _http.server_wait({"X-RateLimit-Reset": str(int(NOW) - 1)}, now=NOW) is None
    assert _http.server_wait({"X-RateLimit-Reset": "soon"}, now=NOW) is None
    assert _http.server_wait({"X-RateLimit-Reset": "inf"}, now=NOW) is None


def test_one_cap_for_every_kind_of_wait() -> None:
    cap = _http.MAX_RETRY_AFTER
    far = email.utils.formatdate(NOW + 86_400, usegmt=True)
    assert _http.server_wait({"Retry-After": "86400"}, now=NOW) == cap
    assert _http.server_wait({"Retry-After": far}, now=NOW) == cap
    assert _http.server_wait({"X-RateLimit-Reset": str(int(NOW) + 86_400)}, now=NOW) == cap


def test_http_date_without_zone_is_gmt_and_now_may_be_a_datetime() -> None:
    now = dt.datetime.fromtimestamp(NOW, dt.timezone.utc)
    date = email.utils.formatdate(NOW + 30, usegmt=True).replace("GMT", "-0000")
    assert _http.parse_retry_after(date, now=now) == pytest.approx(30)
    assert _http.parse_retry_after(date, now=NOW) == pytest.approx(30)


def test_auth0_rate_limit_reset_is_capped_like_keens_retry_after() -> None:
    with Auth0Emulator() as emulator:
        emulator.rate_limit_next(1, reset_in=86_400)
        with ManagementClient(
            emulator.url,
            emulator.m2m_client_id,
            emulator.m2m_client_secret,
            max_retries=0,
            sleep=lambda seconds: None,
        ) as client:
            with pytest.raises(Auth0APIError) as info:
                client.count_users()
    assert info.value.status_code == 429
    assert info.value.retry_after == _http.MAX_RETRY_AFTER


# -- sending ----------------------------------------------------------------------------


def test_send_returns_the_response_or_why_there_is_none() -> None:
    with Auth0Emulator() as emulator, requests.Session() as session:
        answer = _http.send(session, "GET", emulator.url + "/api/v2/users", timeout=(2, 2))
        assert isinstance(answer, requests.Response)
        assert answer.status_code == 401  # no token: an answer all the same

        url = f"http://127.0.0.1:{closed_port()}/x"
        refused = _http.send(session, "GET", url, timeout=(2, 2))
        assert refused == _http.NoResponse("connection refused", transient=True)

        unsendable = _http.send(session, "GET", "http://", timeout=(2, 2))
        assert isinstance(unsendable, _http.NoResponse)
        assert unsendable.transient is False
        assert unsendable.reason == "request failed (InvalidURL)"


def test_check_timeout() -> None:
    assert _http.check_timeout((1, 2)) == (1.0, 2.0)
    for bad in ((0, 1), (1, -1), (float("inf"), 1), (1, float("nan"))):
        with pytest.raises(ValueError, match="positive seconds"):
            _http.check_timeout(bad)


def test_session_client_closes_only_a_session_it_owns() -> None:
    class CountingSession(requests.Session):
        closed = 0

        def close(self) -> None:
            self.closed += 1
            super().close()

    given = CountingSession()
    with KeenClient("p", "wk", api_url="http://127.0.0.1:9", session=given):
        pass
    assert given.closed == 0

    client = KeenClient("p", "wk", api_url="http://127.0.0.1:9")
    owned = CountingSession()
    client._session = owned
    with client as entered:
        assert entered is client
    assert owned.closed == 1


# -- remote text ------------------------------------------------------------------------


def test_excerpt_masks_a_secret_the_cut_would_halve() -> None:
    text = "x" * 290 + SECRET + " tail"
    shown = _http.excerpt(text, 300, secrets=[SECRET])
    assert len(shown) <= 300
    assert SECRET[:8] not in shown
    assert _http.MASK in shown


def test_excerpt_masks_a_secret_hidden_in_html_entities() -> None:
    encoded = "".join(f"&#{ord(c)};" for c in SECRET)
    shown = _http.excerpt(f"<p>key {encoded}</p>", secrets=[None, "", SECRET])
    assert shown == "key ***"


def test_excerpt_is_one_safe_line() -> None:
    shown = _http.excerpt("<html><body>\n<h1>502\tBad\x1b[31m Gateway\u202e</h1></body></html>")
    assert shown == "502 Bad [31m Gateway\\u202e"


# -- one error base ---------------------------------------------------------------------


@pytest.mark.parametrize("cls", [KeenAPIError, Auth0APIError])
def test_api_errors_share_one_base(cls: type[RemoteAPIError]) -> None:
    error = cls(429, "too_many", "slow down", retryable=True, retry_after=3.0)
    assert isinstance(error, RemoteAPIError) and isinstance(error, RemoteError)
    assert error.status_code == 429
    assert (error.error_code, error.api_message) == ("too_many", "slow down")
    assert (error.retryable, error.retry_after) == (True, 3.0)
    assert str(error) == f"{cls.service} answered 429 too_many: slow down"


def test_one_except_clause_catches_both_services_errors() -> None:
    caught: list[RemoteAPIError] = []
    with KeenEmulator() as keen, Auth0Emulator() as auth0:
        keen.fail_next(1, 503)
        auth0.rate_limit_next(1)
        calls: list[t.Callable[[], object]] = []
        keen_client = KeenClient(keen.project_id, keen.write_key, api_url=keen.url)
        auth0_client = ManagementClient(
            auth0.url, auth0.m2m_client_id, auth0.m2m_client_secret, max_retries=0
        )
        calls.append(lambda: keen_client.add_event("signups", {"n": 1}))
        calls.append(auth0_client.count_users)
        with keen_client, auth0_client:
            for call in calls:
                try:
                    call()
                except RemoteAPIError as exc:
                    caught.append(exc)
    assert [type(e) for e in caught] == [KeenAPIError, Auth0APIError]
    assert [e.status_code for e in caught] == [503, 429]
    assert all(e.retryable for e in caught)
