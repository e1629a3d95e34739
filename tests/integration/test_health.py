"""The health verdict (``signup.health()["verdict"]``): its rules, its config keys, and
``flask keen-signup status`` printing it, against a real SQLite outbox."""

from __future__ import annotations

import typing as t

import pytest
from _flow import quickstart_app
from flask import Flask

from flask_keen_signup import KeenSignup
from flask_keen_signup import signup_state
from flask_keen_signup.exceptions import ConfigurationError
from flask_keen_signup.health import HealthThresholds
from flask_keen_signup.health import verdict
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

CALM = {"pending": 0, "dead": 0, "oldest_pending_age": None, "circuit": "closed"}
T = HealthThresholds(
    max_pending_age=300, failing_pending_age=3600, max_dead=0, max_circuit_open=900
)


@pytest.mark.parametrize(
    ("changes", "expected", "reasons"),
    [
        ({}, "ok", []),
        ({"oldest_pending_age": 299.0}, "ok", []),
        ({"oldest_pending_age": 301.0}, "degraded", ["oldest pending event is 301s old"]),
        ({"oldest_pending_age": 3601.0}, "failing", ["oldest pending event is 3601s old"]),
        ({"dead": 2}, "degraded", ["2 dead letter(s)"]),
        ({"circuit": "open", "circuit_since": 1000.0}, "degraded", ["circuit open"]),
        ({"circuit": "half-open", "circuit_since": 1000.0}, "degraded", ["circuit half-open"]),
        ({"circuit": "open", "circuit_since": 0.0}, "failing", ["circuit open for 1000s"]),
        ({"error": "database is locked"}, "failing", ["the delivery state cannot be read"]),
        (
            {"dead": 1, "circuit": "open", "circuit_since": 0.0},
            "failing",
            ["circuit open for 1000s", "1 dead letter(s)"],
        ),
    ],
)
def test_verdict_rules(changes: dict[str, t.Any], expected: str, reasons: list[str]) -> None:
    assert verdict({**CALM, **changes}, T, now=1000.0) == (expected, reasons)


def test_dead_letters_tolerated_up_to_max_dead() -> None:
    loose = HealthThresholds(max_dead=3)
    assert verdict({**CALM, "dead": 3}, loose)[0] == "ok"
    assert verdict({**CALM, "dead": 4}, loose)[0] == "degraded"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("KEEN_SIGNUP_HEALTH_MAX_PENDING_AGE", "soon"),
        ("KEEN_SIGNUP_HEALTH_MAX_PENDING_AGE", -1),
        ("KEEN_SIGNUP_HEALTH_FAILING_PENDING_AGE", 10),  # below MAX_PENDING_AGE's 300
        ("KEEN_SIGNUP_HEALTH_MAX_DEAD", 1.5),
        ("KEEN_SIGNUP_HEALTH_MAX_DEAD", "inf"),
        ("KEEN_SIGNUP_HEALTH_MAX_CIRCUIT_OPEN", "nan"),
    ],
)
def test_bad_thresholds_fail_at_init_app(tmp_path: t.Any, key: str, value: object) -> None:
    app = Flask(__name__)
    app.config.update(
        KEEN_PROJECT_ID="p", KEEN_WRITE_KEY="w", KEEN_SIGNUP_DATABASE=str(tmp_path / "h.db")
    )
    app.config[key] = value
    with pytest.raises(ConfigurationError, match=key):
        KeenSignup(app)


@pytest.fixture
def app(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, tmp_path: t.Any
) -> t.Iterator[Flask]:
    app, _ = quickstart_app(
        keen_signup_auth0,
        keen_signup_keen,
        str(tmp_path / "health.sqlite3"),
        KEEN_SIGNUP_HEALTH_MAX_PENDING_AGE=0,
        KEEN_SIGNUP_HEALTH_FAILING_PENDING_AGE=3600,
    )
    signup_state(app).sender.stop(timeout=5)  # keep the queued event pending
    yield app
    signup_state(app).sender.shutdown(timeout=5)


def test_health_and_status_give_the_verdict(app: Flask) -> None:
    signup = signup_state(app)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["keen-signup", "status"])
    assert result.exit_code == 0, result.output
    assert "verdict:           ok\n" in result.output

    with app.test_request_context():
        signup.tracker.track_claims({"sub": "auth0|late"}, ip=None, user_agent=None)
    import time

    time.sleep(0.05)  # older than KEEN_SIGNUP_HEALTH_MAX_PENDING_AGE = 0
    health = KeenSignup().health(app)
    assert health["verdict"] == "degraded"
    assert health["reasons"][0].startswith("oldest pending event is")
    assert {"pending", "dead", "circuit", "oldest_pending_age"} <= set(health)
    result = runner.invoke(args=["keen-signup", "status"])
    assert "verdict:           degraded (oldest pending event is" in result.output
