"""A 4xx that is not Keen's own verdict is transient (issue 10, item 3).

A proxy, load balancer or captive portal in front of Keen answers with its own HTML page,
an empty body or some other JSON. That says nothing about the events, so the client calls
it retryable and the sender retries with backoff; only a body in Keen's
``{"message", "error_code"}`` shape may dead-letter. Everything runs over real HTTP
against the Keen emulator, whose fault injection sends these bodies as is.
"""

from __future__ import annotations

import time
import typing as t

import pytest
import requests
from _flow import login
from _flow import quickstart_app
from _sqlite import open_sqlite

from flask_keen_signup import signup_state
from flask_keen_signup.delivery._circuit import CircuitBreaker
from flask_keen_signup.exceptions import KeenAPIError
from flask_keen_signup.keen import KeenClient
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

PROXY_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>400 Bad Request</title></head>\n"
    "<body><h1>Bad Request</h1><p>Request Header Or Cookie Too Large</p>"
    "<hr>cloud-proxy</body></html>\n"
)

#: (body, content type) of answers that are not Keen's error body.
NOT_KEEN = {
    "html": (PROXY_PAGE, "text/html"),
    "empty": ("", "text/plain"),
    "text": ("Bad Request", "text/plain"),
    "json-without-error-code": ('{"error": "bad request", "code": 400}', "application/json"),
    "json-list": ("[1, 2]", "application/json"),
    "json-empty-error-code": ('{"error_code": "", "message": "x"}', "application/json"),
}


@pytest.fixture
def keen() -> t.Iterator[KeenEmulator]:
    with KeenEmulator() as emulator:
        yield emulator


def _client(keen: KeenEmulator) -> KeenClient:
    return KeenClient(keen.project_id, keen.write_key, api_url=keen.url, timeout=(2.0, 5.0))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
@pytest.mark.parametrize("kind", sorted(NOT_KEEN))
def test_a_4xx_without_keens_error_body_is_retryable(
    keen: KeenEmulator, status: int, kind: str
) -> None:
    body, content_type = NOT_KEEN[kind]
    keen.fail_next(1, status, body=body, content_type=content_type)
    with _client(keen) as client, pytest.raises(KeenAPIError) as info:
        client.add_events({"signups": [{"userId": "auth0|a"}]})
    error = info.value
    assert error.status_code == status
    assert error.retryable is True, f"{status} {kind} must be retried, not dead-lettered"
    assert error.error_code == str(status)
    assert "<" not in error.api_message and "\n" not in error.api_message
    assert keen.events("signups") == [], "a faulted request stores nothing"


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_a_4xx_with_keens_error_body_stays_permanent(keen: KeenEmulator, status: int) -> None:
    keen.fail_next(1, status, error_code="InvalidPropertyNameError", message="bad name")
    with _client(keen) as client, pytest.raises(KeenAPIError) as info:
        client.add_event("signups", {"userId": "auth0|a"})
    assert info.value.retryable is False
    assert info.value.error_code == "InvalidPropertyNameError"


def test_the_emulator_sends_a_custom_body_as_is(keen: KeenEmulator) -> None:
    keen.fail_next(2, 400, body=PROXY_PAGE)
    url = f"{keen.url}/3.0/projects/{keen.project_id}/events/signups"
    answer = requests.post(url, json={}, headers={"Authorization": keen.write_key}, timeout=5)
    assert answer.status_code == 400
    assert answer.text == PROXY_PAGE
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    # and over the control API, with a content type of one's own
    control = requests.post(
        f"{keen.url}/_emulator/faults",
        json={"status": 403, "body": "", "content_type": "text/plain"},
        timeout=5,
    )
    assert control.status_code == 200, control.text
    assert requests.post(url, json={}, timeout=5).text == PROXY_PAGE  # the second of two
    answer = requests.post(url, json={}, timeout=5)
    assert (answer.status_code, answer.content) == (403, b"")
    assert answer.headers["Content-Type"] == "text/plain"
    bad = requests.post(
        f"{keen.url}/_emulator/faults", json={"status": 400, "body": 12}, timeout=5
    )
    assert bad.status_code == 400


def test_an_html_400_storm_then_recovery_delivers_every_signup_once(
    tmp_path: t.Any, keen: KeenEmulator
) -> None:
    """Through the real login: the storm costs retries, never a dead letter."""
    storm = 6
    database = str(tmp_path / "ledger.sqlite3")
    with Auth0Emulator() as auth0:
        app, signup = quickstart_app(auth0, keen, database)
        assert signup is not None
        keen.fail_next(storm, 400, body=PROXY_PAGE)
        users = [f"user{n}@example.com" for n in range(4)]
        for email in users:
            assert login(app.test_client(), auth0, email).status_code == 302
        sender = signup_state(app).sender
        # A flush is paced by the circuit (issue 16); its default cool-downs (5 s, doubling)
        # would make the storm last a minute here: the same breaker, in moments.
        sender.outcomes.circuit = CircuitBreaker(threshold=3, cooldown=0.05, cap=0.2)
        left = -1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # each flush stops at a failed request
            left = sender.flush(timeout=10)
            if left == 0:
                break
            time.sleep(max(0.05, sender.next_due_in()))
        assert left == 0
        assert signup.health(app)["dead"] == 0
        statuses = [entry.status for entry in keen.request_log]
        assert statuses.count(400) == storm, "the whole storm was answered"
        delivered = [event["userId"] for event in keen.events("signups")]
        assert len(delivered) == len(users) == len(set(delivered))
        assert set(delivered) == {user["user_id"] for user in auth0.users()}
        sender.shutdown(2)
    with open_sqlite(database) as conn:
        assert conn.execute("SELECT COUNT(*) FROM keen_signup_dead_letters").fetchone() == (0,)


def test_the_background_sender_rides_out_a_long_html_400_storm(
    tmp_path: t.Any, keen: KeenEmulator
) -> None:
    """No flush: the sender's own backoff and circuit breaker, through a 25-answer storm."""
    from flask_keen_signup.database import Database
    from flask_keen_signup.delivery import QueuedEvent
    from flask_keen_signup.delivery.sender import Sender
    from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox
    from flask_keen_signup.events import uniqueness_token

    outbox = SQLiteOutbox(Database(str(tmp_path / "storm.sqlite3")))
    users = [f"auth0|storm{n}" for n in range(30)]
    for user in users:
        token = uniqueness_token("signups", user)
        body = {"userId": user, "keen": {"uniqueness_token": token}}
        outbox.enqueue(QueuedEvent("signups", user, token, body))
    keen.fail_next(25, 400, body=PROXY_PAGE)
    client = _client(keen)
    sender = Sender(
        outbox,
        client,
        collection_batch_size=7,
        flush_interval=0.02,
        max_attempts=30,
        backoff_base=0.01,
        backoff_cap=0.05,
        circuit_cooldown=0.05,
        circuit_cap=0.2,
        handle_signals=False,
    )
    sender.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and outbox.pending_count():
            time.sleep(0.05)
        assert outbox.pending_count() == 0
        assert outbox.stats().dead == 0 and outbox.dead_letters() == []
        assert sorted(e["userId"] for e in keen.events("signups")) == sorted(users)
        assert [r.status for r in keen.request_log].count(400) == 25
    finally:
        sender.shutdown(2)
        client.close()
