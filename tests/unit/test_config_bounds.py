"""Numbers, URLs and secrets in the config (issue 10, item 5).

Every numeric key refuses ``inf``, ``NaN`` and overflow with a :class:`ConfigurationError`
naming the key; URL errors never repeat the secret they refuse; and a property-based test
over the whole config table: whatever a key holds, ``load_settings`` gives valid settings
or a ``ConfigurationError`` that names that key, never another exception, and never a
message that contains a secret.

The table is not a list kept by hand: the keys are the ones ``load_settings`` reads (a
recording config), so a key added later is covered without touching this file.
"""

from __future__ import annotations

import datetime as dt
import math
import typing as t

import pytest
from flask import Flask
from flask.config import Config
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from flask_keen_signup.config import DEFAULT_RETENTION
from flask_keen_signup.config import load_settings
from flask_keen_signup.exceptions import ConfigurationError

WRITE_KEY = "wk-5e6f2b1d9c-SECRET-write"
MASTER_KEY = "mk-0c4e7a2f11-SECRET-master"
AUTH0_SECRET = "as-9d8c7b6a55-SECRET-auth0"
REDIS_PASSWORD = "rp-1a2b3c4d5e-SECRET-redis"
PG_PASSWORD = "pg-6f5e4d3c2b-SECRET-postgres"
SECRETS = (WRITE_KEY, MASTER_KEY, AUTH0_SECRET, REDIS_PASSWORD, PG_PASSWORD)
SECRET_KEYS = {
    "KEEN_WRITE_KEY",
    "KEEN_MASTER_KEY",
    "KEEN_SIGNUP_AUTH0_CLIENT_SECRET",
    "KEEN_SIGNUP_REDIS_URL",
    "KEEN_SIGNUP_DATABASE_URL",
}

#: A complete, valid config holding every secret.
BASE: dict[str, t.Any] = {
    "KEEN_PROJECT_ID": "project",
    "KEEN_WRITE_KEY": WRITE_KEY,
    "KEEN_MASTER_KEY": MASTER_KEY,
    "KEEN_SIGNUP_AUTH0_DOMAIN": "tenant.example.com",
    "KEEN_SIGNUP_AUTH0_CLIENT_ID": "m2m-client",
    "KEEN_SIGNUP_AUTH0_CLIENT_SECRET": AUTH0_SECRET,
    "KEEN_SIGNUP_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
    "KEEN_SIGNUP_DATABASE_URL": f"postgresql://app:{PG_PASSWORD}@127.0.0.1:5432/app",
}

NUMERIC = {
    "KEEN_SIGNUP_BATCH_SIZE": 500,
    "KEEN_SIGNUP_FLUSH_INTERVAL": 0.5,
    "KEEN_SIGNUP_MAX_ATTEMPTS": 30,
    "KEEN_SIGNUP_SHUTDOWN_TIMEOUT": 5.0,
    "KEEN_SIGNUP_TIMEOUT": 10.0,
    "KEEN_SIGNUP_RETENTION": 3600,
}
NOT_FINITE = [
    "inf", "-inf", "Infinity", "nan", "NaN", "1e400", "-1e400",
    math.inf, -math.inf, math.nan, 10**400, -(10**400), 10**5000, 1e308,
]  # fmt: skip


class RecordingConfig(Config):
    """A Flask config that remembers every key read through ``get``."""

    read: t.ClassVar[set[str]] = set()

    def get(self, key: t.Any, default: t.Any = None) -> t.Any:
        RecordingConfig.read.add(key)
        return super().get(key, default)


def _app(config: t.Mapping[str, t.Any]) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    return app


def load(**overrides: t.Any) -> t.Any:
    return load_settings(_app({**BASE, **overrides}))


def _config_table() -> list[str]:
    """Every key ``load_settings`` reads, with the stores that make it read the most."""
    RecordingConfig.read = set()
    for store in ("sqlite", "redis", "auth0"):
        app = Flask(__name__)
        app.config = RecordingConfig(app.root_path, {**BASE, "KEEN_SIGNUP_STORE": store})
        load_settings(app)
    return sorted(k for k in RecordingConfig.read if k.startswith("KEEN_"))


CONFIG_KEYS = _config_table()


def test_the_table_is_the_whole_config() -> None:
    for key in (
        *NUMERIC,
        "KEEN_PROJECT_ID",
        "KEEN_WRITE_KEY",
        "KEEN_MASTER_KEY",
        "KEEN_API_URL",
        "KEEN_SIGNUP_STORE",
        "KEEN_SIGNUP_SINCE",
        "KEEN_SIGNUP_REDIS_URL",
        "KEEN_SIGNUP_AUTH0_CLIENT_SECRET",
    ):
        assert key in CONFIG_KEYS


@pytest.mark.parametrize("key", sorted(NUMERIC))
@pytest.mark.parametrize("value", NOT_FINITE, ids=[f"v{i}" for i in range(len(NOT_FINITE))])
def test_numeric_keys_refuse_inf_nan_and_overflow(key: str, value: t.Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(**{key: value})
    assert key in str(info.value)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("KEEN_SIGNUP_BATCH_SIZE", 10_001),
        ("KEEN_SIGNUP_BATCH_SIZE", 0),
        ("KEEN_SIGNUP_BATCH_SIZE", 2.5),
        ("KEEN_SIGNUP_MAX_ATTEMPTS", 10**6),
        ("KEEN_SIGNUP_FLUSH_INTERVAL", 86400),
        ("KEEN_SIGNUP_SHUTDOWN_TIMEOUT", "7200"),
        ("KEEN_SIGNUP_TIMEOUT", [3, 10_000]),
        ("KEEN_SIGNUP_TIMEOUT", "[3, 1e400]"),
        ("KEEN_SIGNUP_TIMEOUT", True),
        ("KEEN_SIGNUP_RETENTION", "11 years"),
        ("KEEN_SIGNUP_RETENTION", "-1"),
        ("KEEN_SIGNUP_RETENTION", "soon"),
        ("KEEN_SIGNUP_RETENTION", "3 fortnights"),
        ("KEEN_SIGNUP_RETRY_FOR", "31 days"),
        ("KEEN_SIGNUP_RETRY_FOR", "-1"),
        ("KEEN_SIGNUP_RETRY_FOR", "forever"),
        ("KEEN_SIGNUP_RETRY_FOR", float("inf")),
    ],
)
def test_out_of_bounds_values_name_the_key(key: str, value: t.Any) -> None:
    with pytest.raises(ConfigurationError, match=key):
        load(**{key: value})


def test_bounds_accept_sane_values() -> None:
    s = load(
        KEEN_SIGNUP_BATCH_SIZE="5000",
        KEEN_SIGNUP_MAX_ATTEMPTS=100.0,
        KEEN_SIGNUP_FLUSH_INTERVAL="60",
        KEEN_SIGNUP_SHUTDOWN_TIMEOUT=30,
        KEEN_SIGNUP_TIMEOUT="[3.05, 27]",
    )
    assert (s.batch_size, s.max_attempts, s.flush_interval) == (5000, 100, 60.0)
    assert (s.shutdown_timeout, s.timeout) == (30.0, (3.05, 27.0))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, DEFAULT_RETENTION),
        ("7 days", 7 * 86400),
        ("12h", 12 * 3600),
        ("30m", 1800),
        ("30 minutes", 1800),
        ("1 week", 7 * 86400),
        ("1.5 hours", 5400),
        ("90", 90),
        ("0", 0),
        (0, 0),
        (3600, 3600),
        (dt.timedelta(days=2), 2 * 86400),
    ],
)
def test_retention_accepts_seconds_and_durations(value: t.Any, seconds: float) -> None:
    s = load() if value is None else load(KEEN_SIGNUP_RETENTION=value)
    assert s.retention == seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, 3 * 86400),
        ("3 days", 3 * 86400),
        ("12h", 12 * 3600),
        (90, 90),
        ("30 days", 30 * 86400),
    ],
)
def test_retry_for_is_a_duration_of_at_most_30_days(value: t.Any, seconds: float) -> None:
    """KEEN_SIGNUP_RETRY_FOR (issue 16): parsed like KEEN_SIGNUP_RETENTION; default 3 days,
    at most 30 (inside Keen's 31-day uniqueness window)."""
    s = load() if value is None else load(KEEN_SIGNUP_RETRY_FOR=value)
    assert s.retry_for == seconds


def test_master_key_is_optional_and_never_in_repr() -> None:
    assert load(KEEN_MASTER_KEY=None).master_key is None
    s = load()
    assert s.master_key == MASTER_KEY
    for secret in (WRITE_KEY, MASTER_KEY, AUTH0_SECRET, REDIS_PASSWORD):
        assert secret not in repr(s)


@pytest.mark.parametrize(
    "url",
    [
        f"https://api.keen.io/?api_key={WRITE_KEY}",
        f"https://api.keen.io/3.0?api_key={WRITE_KEY}&x=1",
        f"https://api.keen.io/#{WRITE_KEY}",
        f"https://user:{WRITE_KEY}@api.keen.io",
        f"https://{WRITE_KEY}@api.keen.io/",
        f"https://{WRITE_KEY}:pw@host",
    ],
)
def test_url_errors_never_repeat_the_secret(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(KEEN_API_URL=url)
    assert "KEEN_API_URL" in str(info.value)
    assert WRITE_KEY not in str(info.value) and WRITE_KEY not in repr(info.value)


def test_a_bad_redis_url_is_not_shown() -> None:
    url = f"http://:{REDIS_PASSWORD}@127.0.0.1:6379/0"
    with pytest.raises(ConfigurationError) as info:
        load(KEEN_SIGNUP_REDIS_URL=url, KEEN_SIGNUP_STORE="redis")
    assert "KEEN_SIGNUP_REDIS_URL" in str(info.value)
    assert REDIS_PASSWORD not in str(info.value)


def test_a_bad_port_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="KEEN_API_URL"):
        load(KEEN_API_URL="https://api.keen.io:99999")


# --------------------------------------------------------------------------- property-based

_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**5000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(
        [
            "inf", "-inf", "nan", "1e400", "0", "-1", "1", "3.5", "7 days", "12h", "[1, 2]",
            "[3, \"x\"]", "[1e400, 1]", "true", "false", "sqlite", "redis", "sync", "none",
            "https://api.keen.io", "2026-11-18T00:00:00Z", "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+23:59", "name,email", "[\"ip_to_geo\"]", "[[[[[[",
            "x" * 5000, "\n\x1b[31m\u202e",
        ]
    ),
    st.datetimes(),
    st.dates(),
    st.timedeltas(),
)  # fmt: skip
_values = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=5), inner, max_size=2),
    ),
    max_leaves=6,
)


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    key=st.sampled_from(CONFIG_KEYS),
    value=_values,
    store=st.sampled_from(["sqlite", "redis", "auth0", "session"]),
)
def test_any_value_of_any_key_is_valid_or_a_configuration_error_naming_it(
    key: str, value: t.Any, store: str
) -> None:
    config = {**BASE, "KEEN_SIGNUP_STORE": store, key: value}
    try:
        load_settings(_app(config))
    except ConfigurationError as exc:
        text = f"{exc}\n{exc!r}\n{exc.args!r}"
        if key not in text:
            # Only a missing required key may be named instead of the one given (e.g. an
            # empty KEEN_SIGNUP_STORE value is fine, but then another key is required).
            assert "is not set" in text or "is required" in text, (key, text)
        for secret in SECRETS:
            assert secret not in text, (key, text)
        if key in SECRET_KEYS and isinstance(value, str) and len(value.strip()) >= 6:
            assert value.strip() not in text, (key, text)  # a refused secret is not repeated
        chained = exc.__cause__ or exc.__context__
        while chained is not None:
            for secret in SECRETS:
                assert secret not in f"{chained}\n{chained!r}", (key, chained)
            chained = chained.__cause__ or chained.__context__
    # anything else propagates and fails the test


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(sorted(NUMERIC)), value=_values)
def test_numeric_keys_never_accept_a_non_finite_value(key: str, value: t.Any) -> None:
    try:
        s = load(**{key: value})
    except ConfigurationError as exc:
        assert key in str(exc)
        return
    number_fields = (s.batch_size, s.flush_interval, s.max_attempts, s.shutdown_timeout)
    for number in (*number_fields, *s.timeout, s.retention):
        assert math.isfinite(number)


def test_other_number_types() -> None:
    import decimal
    import fractions

    s = load(
        KEEN_SIGNUP_BATCH_SIZE=decimal.Decimal("250"),
        KEEN_SIGNUP_FLUSH_INTERVAL=fractions.Fraction(1, 4),
    )
    assert (s.batch_size, s.flush_interval) == (250, 0.25)
    for value in (decimal.Decimal("1e400"), decimal.Decimal("NaN"), fractions.Fraction(10**400, 3)):
        with pytest.raises(ConfigurationError, match="KEEN_SIGNUP_BATCH_SIZE"):
            load(KEEN_SIGNUP_BATCH_SIZE=value)


#: Keys read at init_app by the parts that own them, not by load_settings.
EXTRA_KEYS = (
    "KEEN_SIGNUP_ATTRIBUTION",
    "KEEN_SIGNUP_ATTRIBUTION_IGNORE_HOSTS",
    "KEEN_SIGNUP_ATTRIBUTION_MAX_AGE",
    "KEEN_SIGNUP_HEALTH_MAX_PENDING_AGE",
    "KEEN_SIGNUP_HEALTH_FAILING_PENDING_AGE",
    "KEEN_SIGNUP_HEALTH_MAX_DEAD",
    "KEEN_SIGNUP_HEALTH_MAX_CIRCUIT_OPEN",
    "KEEN_SIGNUP_METRICS",
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(key=st.sampled_from(EXTRA_KEYS), value=_values)
def test_the_keys_read_outside_load_settings_too(key: str, value: t.Any) -> None:
    from flask_keen_signup import metrics
    from flask_keen_signup.attribution import load_attribution_settings
    from flask_keen_signup.health import load_health_thresholds

    app = _app({**BASE, key: value})
    try:
        load_attribution_settings(app)
        load_health_thresholds(app)
        metrics.enabled(app)
    except ConfigurationError as exc:
        assert key in str(exc) or "KEEN_SIGNUP_HEALTH_" in str(exc), (key, str(exc))
