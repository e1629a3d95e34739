"""Config validation: every bad value fails at init_app with a message naming its key."""

from __future__ import annotations

import datetime as dt
import typing as t

import pytest
from flask import Flask

from flask_keen_signup.config import load_settings
from flask_keen_signup.exceptions import ConfigurationError

BASE = {"KEEN_PROJECT_ID": "p", "KEEN_WRITE_KEY": "w"}


def settings_for(**config: t.Any) -> t.Any:
    app = Flask(__name__)
    app.config.update({**BASE, **config})
    return load_settings(app)


def test_defaults_match_the_design() -> None:
    s = settings_for()
    assert s.api_url == "https://api.keen.io"
    assert s.collection == "signups"
    assert s.enabled is True
    assert s.delivery == "background"
    assert s.store == "sqlite"
    assert s.database.endswith("keen_signup.sqlite3")
    assert s.marker == "signedUp"
    assert s.claims == ("name",)
    assert s.ip_mode == "full"
    assert s.addons == ()
    assert s.timeout == (3.05, 10.0)
    assert s.propagate_errors is None


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"KEEN_PROJECT_ID": None}, "KEEN_PROJECT_ID"),
        ({"KEEN_WRITE_KEY": ""}, "KEEN_WRITE_KEY"),
        ({"KEEN_API_URL": "ftp://x"}, "KEEN_API_URL"),
        ({"KEEN_API_URL": "https://api.keen.io/?api_key=x"}, "KEEN_API_URL"),
        ({"KEEN_SIGNUP_COLLECTION": "$bad"}, "KEEN_SIGNUP_COLLECTION"),
        ({"KEEN_SIGNUP_COLLECTION": "_hidden"}, "KEEN_SIGNUP_COLLECTION"),
        ({"KEEN_SIGNUP_COLLECTION": "x" * 65}, "KEEN_SIGNUP_COLLECTION"),
        ({"KEEN_SIGNUP_COLLECTION": "ends."}, "KEEN_SIGNUP_COLLECTION"),
        ({"KEEN_SIGNUP_COLLECTION": 3}, "KEEN_SIGNUP_COLLECTION"),
        ({"KEEN_SIGNUP_ENABLED": "maybe"}, "KEEN_SIGNUP_ENABLED"),
        ({"KEEN_SIGNUP_DELIVERY": "later"}, "KEEN_SIGNUP_DELIVERY"),
        ({"KEEN_SIGNUP_STORE": "mongodb"}, "KEEN_SIGNUP_STORE"),
        ({"KEEN_SIGNUP_STORE": object()}, "KEEN_SIGNUP_STORE"),
        ({"KEEN_SIGNUP_STORE": "auth0"}, "KEEN_SIGNUP_AUTH0_DOMAIN"),
        ({"KEEN_SIGNUP_STORE": "redis"}, "KEEN_SIGNUP_REDIS_URL"),
        ({"KEEN_SIGNUP_SINCE": "yesterday"}, "KEEN_SIGNUP_SINCE"),
        ({"KEEN_SIGNUP_CLAIMS": 5}, "KEEN_SIGNUP_CLAIMS"),
        ({"KEEN_SIGNUP_CLAIMS": "[not json"}, "KEEN_SIGNUP_CLAIMS"),
        ({"KEEN_SIGNUP_IP": "partial"}, "KEEN_SIGNUP_IP"),
        ({"KEEN_SIGNUP_ADDONS": ["date_time_parser"]}, "KEEN_SIGNUP_ADDONS"),
        ({"KEEN_SIGNUP_TIMEOUT": 0}, "KEEN_SIGNUP_TIMEOUT"),
        ({"KEEN_SIGNUP_TIMEOUT": [1, 2, 3]}, "KEEN_SIGNUP_TIMEOUT"),
        ({"KEEN_SIGNUP_TIMEOUT": "soon"}, "KEEN_SIGNUP_TIMEOUT"),
        ({"KEEN_SIGNUP_BATCH_SIZE": 0}, "KEEN_SIGNUP_BATCH_SIZE"),
        ({"KEEN_SIGNUP_BATCH_SIZE": 1.5}, "KEEN_SIGNUP_BATCH_SIZE"),
        ({"KEEN_SIGNUP_MAX_ATTEMPTS": True}, "KEEN_SIGNUP_MAX_ATTEMPTS"),
        ({"KEEN_SIGNUP_FLUSH_INTERVAL": -1}, "KEEN_SIGNUP_FLUSH_INTERVAL"),
        ({"KEEN_SIGNUP_SHUTDOWN_TIMEOUT": "nan"}, "KEEN_SIGNUP_SHUTDOWN_TIMEOUT"),
        ({"KEEN_SIGNUP_SQLITE_SYNCHRONOUS": "off"}, "KEEN_SIGNUP_SQLITE_SYNCHRONOUS"),
        ({"KEEN_SIGNUP_PROPAGATE_ERRORS": "sometimes"}, "KEEN_SIGNUP_PROPAGATE_ERRORS"),
    ],
)
def test_bad_values_name_their_key(config: dict[str, t.Any], key: str) -> None:
    with pytest.raises(ConfigurationError, match=key):
        settings_for(**config)


def test_write_key_never_in_the_error_or_repr() -> None:
    with pytest.raises(ConfigurationError) as info:
        settings_for(KEEN_WRITE_KEY="sekrit-write-key-123", KEEN_SIGNUP_IP="bad")
    assert "sekrit-write-key-123" not in str(info.value)
    s = settings_for(
        KEEN_WRITE_KEY="sekrit-write-key-123", KEEN_SIGNUP_AUTH0_CLIENT_SECRET="cs-999"
    )
    assert "sekrit-write-key-123" not in repr(s)
    assert "cs-999" not in repr(s)


def test_disabled_needs_no_keys() -> None:
    app = Flask(__name__)
    app.config["KEEN_SIGNUP_ENABLED"] = False
    assert load_settings(app).enabled is False


def test_strings_from_the_environment_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_KEEN_PROJECT_ID", "proj")
    monkeypatch.setenv("FLASK_KEEN_WRITE_KEY", "key")
    monkeypatch.setenv("FLASK_KEEN_SIGNUP_CLAIMS", '["name", "email"]')
    monkeypatch.setenv("FLASK_KEEN_SIGNUP_ENABLED", "true")
    monkeypatch.setenv("FLASK_KEEN_SIGNUP_TIMEOUT", "[1, 5]")
    monkeypatch.setenv("FLASK_KEEN_SIGNUP_SINCE", "2026-11-18T00:00:00Z")
    monkeypatch.setenv("FLASK_KEEN_SIGNUP_CREATED_AT_CLAIM", "https://example.com/created_at")
    monkeypatch.setenv("FLASK_KEEN_SIGNUP_IP", "anonymize")
    app = Flask(__name__)
    app.config.from_prefixed_env()
    s = load_settings(app)
    assert s.project_id == "proj"
    assert s.claims == ("name", "email")
    assert s.timeout == (1.0, 5.0)
    assert s.since == dt.datetime(2026, 11, 18, tzinfo=dt.timezone.utc)
    assert s.ip_mode == "anonymize"


def test_comma_separated_claims_and_single_timeout() -> None:
    s = settings_for(KEEN_SIGNUP_CLAIMS="name, email", KEEN_SIGNUP_TIMEOUT=2)
    assert s.claims == ("name", "email")
    assert s.timeout == (2.0, 2.0)


def test_naive_since_is_utc() -> None:
    s = settings_for(KEEN_SIGNUP_SINCE=dt.datetime(2026, 1, 1), KEEN_SIGNUP_CREATED_AT_CLAIM="c")
    assert s.since == dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def test_custom_store_instance_is_accepted() -> None:
    from flask_keen_signup.stores import MemoryStore

    store = MemoryStore()
    assert settings_for(KEEN_SIGNUP_STORE=store).store is store


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"KEEN_SIGNUP_STORE": "redis"}, "KEEN_SIGNUP_REDIS_URL is required"),
        ({"KEEN_SIGNUP_STORE": "redis", "KEEN_SIGNUP_REDIS_URL": "http://h"}, "redis://, rediss://"),
        ({"KEEN_SIGNUP_STORE": "postgres"}, "KEEN_SIGNUP_DATABASE_URL is required"),
        ({"KEEN_SIGNUP_STORE": "auth0"}, "KEEN_SIGNUP_AUTH0_DOMAIN is required"),
        (
            {"KEEN_SIGNUP_STORE": "auth0", "KEEN_SIGNUP_AUTH0_DOMAIN": "t.example.com"},
            "KEEN_SIGNUP_AUTH0_CLIENT_ID is required",
        ),
        ({"KEEN_SIGNUP_STORE": " Redis ", "KEEN_SIGNUP_ENABLED": False}, None),
        ({"KEEN_SIGNUP_STORE": "postgres", "KEEN_SIGNUP_ENABLED": False}, None),
        ({"KEEN_SIGNUP_STORE": "sqlite"}, None),
    ],
)
def test_each_backend_checks_the_settings_it_needs(
    config: dict[str, t.Any], error: str | None
) -> None:
    """``Backend.validate`` of the store, called by ``load_settings`` (``init_app``)."""
    if error is None:
        assert settings_for(**config).store == config["KEEN_SIGNUP_STORE"].strip().lower()
    else:
        with pytest.raises(ConfigurationError, match=error):
            settings_for(**config)


def test_a_registered_backend_checks_its_settings_at_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flask_keen_signup.backends import REGISTRY
    from flask_keen_signup.backends import Backend

    def validate(settings: t.Any) -> None:
        if settings.redis_prefix != "mine":
            raise ConfigurationError("KEEN_SIGNUP_REDIS_PREFIX must be 'mine' for mystore")

    monkeypatch.setitem(REGISTRY, "mystore", Backend("mystore", REGISTRY["sqlite"].build, validate))
    with pytest.raises(ConfigurationError, match="must be 'mine' for mystore"):
        settings_for(KEEN_SIGNUP_STORE="mystore")
    assert settings_for(KEEN_SIGNUP_STORE="MyStore", KEEN_SIGNUP_REDIS_PREFIX="mine").store == (
        "mystore"
    )
