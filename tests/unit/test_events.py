"""Tests of the signup event builder (``flask_keen_signup.events``).

The builder's promise is that whatever the claims, the event it returns is one Keen accepts.
``keen_problems`` below checks that promise independently of the package: it implements
the validation rules of ``reference/keen-api.md`` §9.4 (plus the JSON, size and ``keen``
namespace rules of §3 and §9.3) from the spec, not from the code under test.
"""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import enum
import hashlib
import json
import logging
import math
import random
import re
import typing as t
import uuid

import pytest

from flask_keen_signup import InvalidClaimsError
from flask_keen_signup.events import anonymize_ip
from flask_keen_signup.events import build_signup_event
from flask_keen_signup.events import connection_of
from flask_keen_signup.events import format_timestamp
from flask_keen_signup.events import keen_text
from flask_keen_signup.events import parse_created_at
from flask_keen_signup.events import sanitize_properties
from flask_keen_signup.events import uniqueness_token

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
SUB = "auth0|abc"
TOKEN_SIGNUPS_AUTH0_ABC = "0c8605259699264675931d15da38f83e5624fc674b4afde9a6713e774600d082"
SECRET = "SECRET-VALUE-7f3a"  # planted in values; must never reach a log line


# --------------------------------------------------------------------------------------
# An independent Keen validator (keen-api.md §9.4, §9.3, §3.1, §3.3)
# --------------------------------------------------------------------------------------

_TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


#: What DESIGN §3 keeps out of every string sent to Keen (people read it in terminals and
#: spreadsheets): C0 controls but tab, DEL, C1, bidi overrides and isolates.
UNSAFE_TEXT = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def keen_problems(event: object, *, strict: bool = True) -> list[str]:
    """Return every reason Keen would refuse ``event``; empty if it would accept it.

    ``strict`` applies the stricter reading of each ambiguous rule: names < 256 characters
    (the guide) instead of <= 256 (the server message), arrays of objects refused
    (``ListsOfNonPrimitivesNotAllowedError``), string lengths counted in UTF-16 units.
    """
    problems: list[str] = []
    try:
        text = json.dumps(event, allow_nan=False)
        json.dumps(event, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        return [f"not serialisable as JSON: {exc}"]
    if len(text) > 900_000:
        problems.append(f"event is {len(text)} bytes, over 900,000")
    data = json.loads(text)
    if not isinstance(data, dict):
        return ["event is not an object"]
    name_limit = 255 if strict else 256

    def check_name(name: str, path: str) -> None:
        if not name:
            problems.append(f"{path}: empty property name")
        if len(name) > name_limit:
            problems.append(f"{path}: property name longer than {name_limit}")
        if "." in name:
            problems.append(f"{path}: '.' in property name")
        if name.startswith("$"):
            problems.append(f"{path}: property name starts with '$'")
        if UNSAFE_TEXT.search(name):
            problems.append(f"{path}: control or bidi character in a property name")

    def check_value(value: object, path: str) -> None:
        if isinstance(value, str):
            units = len(value.encode("utf-16-le")) // 2 if strict else len(value)
            if units >= 10_000:
                problems.append(f"{path}: string of {units} chars")
            if UNSAFE_TEXT.search(value):
                problems.append(f"{path}: control or bidi character in a string")
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):
            if not -(2**63) <= value <= 2**63 - 1:
                problems.append(f"{path}: integer outside int64")
        elif isinstance(value, float):
            if not math.isfinite(value) or not -(2**63) <= value <= 2**63 - 1:
                problems.append(f"{path}: number outside int64")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if strict and isinstance(item, (dict, list)):
                    problems.append(f"{path}[{index}]: non-primitive in an array")
                check_value(item, f"{path}[{index}]")
        elif isinstance(value, dict):
            for key, item in value.items():
                check_name(key, f"{path}.{key}")
                check_value(item, f"{path}.{key}")
        else:  # pragma: no cover - json.loads returns nothing else
            problems.append(f"{path}: unexpected type {type(value).__name__}")

    for key, value in data.items():
        if key == "keen":
            continue
        check_name(key, key)
        check_value(value, key)

    keen = data.get("keen")
    if not isinstance(keen, dict):
        return [*problems, "keen is not an object"]
    if not isinstance(keen.get("timestamp"), str) or not _TIMESTAMP_RE.fullmatch(keen["timestamp"]):
        problems.append("keen.timestamp is not ISO-8601 with milliseconds and Z")
    token = keen.get("uniqueness_token")
    if not isinstance(token, str) or len(token) > 64:
        problems.append("keen.uniqueness_token missing or longer than 64")
    for index, addon in enumerate(keen.get("addons", [])):
        if not (
            isinstance(addon, dict)
            and set(addon) == {"name", "input", "output"}
            and isinstance(addon["name"], str)
            and addon["name"].startswith("keen:")
            and isinstance(addon["input"], dict)
            and isinstance(addon["output"], str)
        ):
            problems.append(f"keen.addons[{index}] has not Keen's add-on shape")
            continue
        for source in addon["input"].values():
            if source not in data:
                problems.append(f"keen.addons[{index}] input {source!r} not in the event")
    return problems


def build(claims: t.Mapping[str, t.Any] | None = None, **kwargs: t.Any) -> dict[str, t.Any]:
    """``build_signup_event`` with the test defaults; the result must be Keen-valid."""
    options: dict[str, t.Any] = {
        "collection": "signups",
        "ip": "203.0.113.7",
        "user_agent": "Mozilla/5.0",
        "now": NOW,
    }
    options.update(kwargs)
    event = build_signup_event({"sub": SUB, "name": "Ada"} if claims is None else claims, **options)
    assert keen_problems(event) == []
    return event


def messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def test_validator_catches_what_keen_refuses() -> None:
    """The validator itself must be able to fail, or the property tests prove nothing."""
    good: dict[str, t.Any] = {
        "a": 1,
        "keen": {"timestamp": "2026-11-26T10:00:00.000Z", "uniqueness_token": "x"},
    }
    assert keen_problems(good) == []
    for bad in (
        {"a.b": 1},
        {"$a": 1},
        {"": 1},
        {"a" * 256: 1},
        {"a": "x" * 10_000},
        {"a": 2**63},
        {"a": [{"b": 1}]},
        {"a": {"b.c": 1}},
        {"a": float("nan")},
        {"a": b"x"},
        {"a": "\ud800"},
        {"a": "😀" * 5_000},
    ):
        assert keen_problems({**good, **bad}), bad
    assert keen_problems({"a": 1})
    assert keen_problems({**good, "keen": {**good["keen"], "uniqueness_token": "x" * 65}})
    assert keen_problems({**good, "keen": {**good["keen"], "timestamp": "2026-11-26"}})
    addon = {"name": "keen:ip_to_geo", "input": {"ip": "ip"}, "output": "geo"}
    assert keen_problems({**good, "keen": {**good["keen"], "addons": [addon]}})
    assert keen_problems({"a" * 256: 1, "keen": good["keen"]}, strict=False) == []


# --------------------------------------------------------------------------------------
# Uniqueness token, connection, timestamps, IPs
# --------------------------------------------------------------------------------------


def test_uniqueness_token_is_sha256_of_collection_newline_user() -> None:
    expected = hashlib.sha256(b"signups\nauth0|abc").hexdigest()
    assert uniqueness_token("signups", SUB) == expected == TOKEN_SIGNUPS_AUTH0_ABC
    assert _HEX64_RE.fullmatch(uniqueness_token("signups", SUB))


@pytest.mark.parametrize(
    ("collection", "user_id"),
    [("signups", "google-oauth2|1234567890"), ("x", ""), ("signups", "Ädä|ünïcode 😀")],
)
def test_uniqueness_token_shape_and_separation(collection: str, user_id: str) -> None:
    token = uniqueness_token(collection, user_id)
    assert _HEX64_RE.fullmatch(token)
    assert token == hashlib.sha256(f"{collection}\n{user_id}".encode()).hexdigest()
    assert token != uniqueness_token(collection + "2", user_id)


def test_event_carries_the_uniqueness_token_for_its_collection() -> None:
    assert build()["keen"]["uniqueness_token"] == TOKEN_SIGNUPS_AUTH0_ABC
    other = build(collection="users")["keen"]["uniqueness_token"]
    assert other == uniqueness_token("users", SUB) != TOKEN_SIGNUPS_AUTH0_ABC


@pytest.mark.parametrize(
    ("sub", "connection"),
    [
        ("google-oauth2|123", "google-oauth2"),
        ("auth0|abc", "auth0"),
        ("github|42", "github"),
        ("windowslive|cid", "windowslive"),
        ("apple|001.abc", "apple"),
        ("samlp|acme-sso|jane", "samlp"),
        ("email|65a1", "email"),
        ("no-pipe", None),
        ("|abc", None),
    ],
)
def test_connection_of(sub: str, connection: str | None) -> None:
    assert connection_of(sub) == connection
    event = build({"sub": sub})
    if connection is None:
        assert "connection" not in event
    else:
        assert event["connection"] == connection


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (dt.datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC), "2026-11-26T10:00:00.000Z"),
        (dt.datetime(2026, 11, 26, 10, 0, 0), "2026-11-26T10:00:00.000Z"),  # naive = UTC
        (dt.datetime(2026, 11, 26, 10, 0, 0, 999_999, tzinfo=UTC), "2026-11-26T10:00:00.999Z"),
        (dt.datetime(2026, 11, 26, 10, 0, 0, 1_500, tzinfo=UTC), "2026-11-26T10:00:00.001Z"),
        (
            dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=-8))),
            "2026-11-26T10:00:00.000Z",
        ),
        (
            dt.datetime(2027, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            "2026-12-31T23:30:00.000Z",
        ),
        (dt.datetime(999, 1, 2, 3, 4, 5), "0999-01-02T03:04:05.000Z"),
    ],
)
def test_format_timestamp(moment: dt.datetime, text: str) -> None:
    assert format_timestamp(moment) == text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-26T10:00:00.000Z", dt.datetime(2026, 11, 26, 10, tzinfo=UTC)),
        ("2026-11-26T10:00:00Z", dt.datetime(2026, 11, 26, 10, tzinfo=UTC)),
        ("2026-11-26T10:00:00z", dt.datetime(2026, 11, 26, 10, tzinfo=UTC)),
        ("2026-11-26T10:00:00", dt.datetime(2026, 11, 26, 10, tzinfo=UTC)),
        ("2026-11-26 10:00:00+00:00", dt.datetime(2026, 11, 26, 10, tzinfo=UTC)),
        ("2026-11-26T12:00:00+02:00", dt.datetime(2026, 11, 26, 10, tzinfo=UTC)),
        ("2026-11-26T05:30:00-0430", dt.datetime(2026, 11, 26, 10, tzinfo=UTC)),
        ("2026-11-26T11:00:00+01", dt.datetime(2026, 11, 26, 10, tzinfo=UTC)),
        ("2026-11-26T10:00:00.5Z", dt.datetime(2026, 11, 26, 10, 0, 0, 500_000, tzinfo=UTC)),
        (
            "2026-11-26T10:00:00.123456789Z",
            dt.datetime(2026, 11, 26, 10, 0, 0, 123_456, tzinfo=UTC),
        ),
        ("2026-11-26", dt.datetime(2026, 11, 26, tzinfo=UTC)),
        (" 2026-11-26T10:00Z ", dt.datetime(2026, 11, 26, 10, tzinfo=UTC)),
        (1_795_687_200, dt.datetime(2026, 11, 26, 10, tzinfo=UTC)),
        (1_795_687_200.25, dt.datetime(2026, 11, 26, 10, 0, 0, 250_000, tzinfo=UTC)),
        ("1795687200", dt.datetime(2026, 11, 26, 10, tzinfo=UTC)),
        (1_795_687_200_000, dt.datetime(2026, 11, 26, 10, tzinfo=UTC)),  # milliseconds
        (0, dt.datetime(1970, 1, 1, tzinfo=UTC)),
        (dt.datetime(2026, 11, 26, 10), dt.datetime(2026, 11, 26, 10, tzinfo=UTC)),
        (
            dt.datetime(2026, 11, 26, 11, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            dt.datetime(2026, 11, 26, 10, tzinfo=UTC),
        ),
        (dt.date(2026, 11, 26), dt.datetime(2026, 11, 26, tzinfo=UTC)),
    ],
)
def test_parse_created_at(value: object, expected: dt.datetime) -> None:
    parsed = parse_created_at(value)
    assert parsed == expected
    assert parsed is not None and parsed.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "garbage",
        "2026-13-01T00:00:00Z",
        "2026-02-30",
        "2026-11-26T25:00:00Z",
        "2026-11-26T10:00:00+25:00",
        "26/11/2026",
        "nan",
        "inf",
        float("nan"),
        float("inf"),
        10**400,
        True,
        False,
        b"2026-11-26",
        [2026, 11, 26],
        {"date": "2026-11-26"},
        object(),
    ],
)
def test_parse_created_at_garbage_is_none(value: object) -> None:
    assert parse_created_at(value) is None


@pytest.mark.parametrize(
    ("ip", "anonymized"),
    [
        ("203.0.113.7", "203.0.113.0"),
        ("10.0.0.255", "10.0.0.0"),
        ("203.0.113.0", "203.0.113.0"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1::"),
        ("2001:0db8:abcd:0012:ffff:ffff:ffff:ffff", "2001:db8:abcd::"),
        ("::1", "::"),
        ("fe80::1%eth0", "fe80::"),
        ("::ffff:203.0.113.7", "203.0.113.0"),
        ("::FFFF:198.51.100.200", "198.51.100.0"),
        ("not an ip", None),
        ("203.0.113", None),
        ("203.0.113.256", None),
        ("", None),
        ("2001:db8::g", None),
    ],
)
def test_anonymize_ip(ip: str, anonymized: str | None) -> None:
    assert anonymize_ip(ip) == anonymized


IP_CASES = {
    "v4": "203.0.113.7",
    "v6": "2001:db8:1:2:3:4:5:6",
    "mapped": "::ffff:203.0.113.7",
    "invalid": "999.1.1.1",
    "garbage": "203.0.113.7, 10.0.0.1",
    "empty": "",
    "none": None,
}
IP_EXPECTED = {
    "full": {"v4": "203.0.113.7", "v6": "2001:db8:1:2:3:4:5:6", "mapped": "::ffff:203.0.113.7"},
    "anonymize": {"v4": "203.0.113.0", "v6": "2001:db8:1::", "mapped": "203.0.113.0"},
    "none": {},
}


@pytest.mark.parametrize("mode", list(IP_EXPECTED))
@pytest.mark.parametrize("case", list(IP_CASES))
def test_ip_modes(mode: str, case: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "flask_keen_signup")
    event = build(ip=IP_CASES[case], ip_mode=mode)
    expected = IP_EXPECTED[mode].get(case)
    if expected is None:
        assert "ip" not in event
    else:
        assert event["ip"] == expected
    address = IP_CASES[case]
    if address:  # an IP address is personal data: never logged
        assert address not in messages(caplog)


def test_invalid_ip_is_logged_without_its_value(caplog: pytest.LogCaptureFixture) -> None:
    for mode in ("full", "anonymize"):
        caplog.clear()
        build(ip="203.0.113.999", ip_mode=mode)
        assert "not a valid IP address" in messages(caplog)
        assert "203.0.113.999" not in messages(caplog)


# --------------------------------------------------------------------------------------
# The event
# --------------------------------------------------------------------------------------


def test_default_event_is_the_design_shape() -> None:
    event = build({"sub": SUB, "name": "Ada", "email": "ada@example.com", "nickname": "ada"})
    assert event == {
        "userId": SUB,
        "name": "Ada",
        "ip": "203.0.113.7",
        "connection": "auth0",
        "user_agent": "Mozilla/5.0",
        "keen": {
            "timestamp": "2026-11-26T10:00:00.000Z",
            "uniqueness_token": TOKEN_SIGNUPS_AUTH0_ABC,
        },
    }
    assert list(event)[0] == "userId" and list(event)[-1] == "keen"


def test_only_allow_listed_claims_and_email_is_opt_in() -> None:
    claims = {"sub": SUB, "name": "Ada", "email": "ada@example.com", "picture": "https://p/1"}
    assert "email" not in build(claims)
    assert "picture" not in build(claims)
    event = build(claims, claim_names=("name", "email"))
    assert event["email"] == "ada@example.com" and event["name"] == "Ada"
    assert "picture" not in event
    event = build(claims, claim_names=())
    assert set(event) == {"userId", "ip", "connection", "user_agent", "keen"}


def test_absent_and_null_claims_are_omitted_not_null() -> None:
    event = build({"sub": SUB, "email": None}, claim_names=("name", "email", "nickname"))
    assert "name" not in event and "email" not in event and "nickname" not in event
    assert None not in event.values()


def test_structured_claims_are_kept_and_sanitised() -> None:
    claims = {
        "sub": SUB,
        "address": {"country": "UK", "street.address": "1 Road"},
        "https://example.com/roles": ["admin", "user"],
        "email_verified": True,
        "updated_at": 1_795_687_200,
    }
    event = build(
        claims,
        claim_names=("address", "https://example.com/roles", "email_verified", "updated_at"),
    )
    assert event["address"] == {"country": "UK", "street_address": "1 Road"}
    assert event["https://example_com/roles"] == ["admin", "user"]
    assert event["email_verified"] is True
    assert event["updated_at"] == 1_795_687_200


def test_created_at_wins_over_now_for_the_timestamp() -> None:
    assert build()["keen"]["timestamp"] == "2026-11-26T10:00:00.000Z"
    created = dt.datetime(2019, 5, 4, 3, 2, 1, 987_654, tzinfo=UTC)
    assert build(created_at=created)["keen"]["timestamp"] == "2019-05-04T03:02:01.987Z"
    assert build(created_at=None)["keen"]["timestamp"] == "2026-11-26T10:00:00.000Z"
    naive_now = dt.datetime(2026, 11, 26, 10, 0, 0, 42_000)
    assert build(now=naive_now)["keen"]["timestamp"] == "2026-11-26T10:00:00.042Z"
    assert build(created_at=parse_created_at("2020-01-01T01:00:00+01:00"))["keen"]["timestamp"] == (
        "2020-01-01T00:00:00.000Z"
    )


def test_unrepresentable_created_at_falls_back_to_now(caplog: pytest.LogCaptureFixture) -> None:
    created = dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert build(created_at=created)["keen"]["timestamp"] == "2026-11-26T10:00:00.000Z"
    assert "created_at" in messages(caplog)


def test_user_agent_truncated_and_omitted() -> None:
    assert build(user_agent="x" * 9_999)["user_agent"] == "x" * 9_999
    assert build(user_agent="x" * 50_000)["user_agent"] == "x" * 9_999
    assert "user_agent" not in build(user_agent=None)
    assert "user_agent" not in build(user_agent="")


IP_TO_GEO = {"name": "keen:ip_to_geo", "input": {"ip": "ip"}, "output": "ip_geo_info"}
UA_PARSER = {
    "name": "keen:ua_parser",
    "input": {"ua_string": "user_agent"},
    "output": "parsed_user_agent",
}


def test_addons_off_by_default() -> None:
    assert "addons" not in build()["keen"]


def test_addons_in_keens_shape() -> None:
    assert build(addons=("ip_to_geo",))["keen"]["addons"] == [IP_TO_GEO]
    assert build(addons=("ua_parser",))["keen"]["addons"] == [UA_PARSER]
    both = build(addons=("ip_to_geo", "ua_parser", "ip_to_geo"))
    assert both["keen"]["addons"] == [IP_TO_GEO, UA_PARSER]


def test_addon_input_works_with_anonymized_ip() -> None:
    event = build(addons=("ip_to_geo",), ip_mode="anonymize")
    assert event["ip"] == "203.0.113.0" and event["keen"]["addons"] == [IP_TO_GEO]


@pytest.mark.parametrize(
    "kwargs",
    [{"ip": None}, {"ip": "bogus"}, {"ip_mode": "none"}],
)
def test_ip_to_geo_skipped_without_ip(
    kwargs: dict[str, t.Any], caplog: pytest.LogCaptureFixture
) -> None:
    event = build(addons=("ip_to_geo", "ua_parser"), **kwargs)
    assert event["keen"]["addons"] == [UA_PARSER]
    assert "keen:ip_to_geo" in messages(caplog)


def test_ua_parser_skipped_without_user_agent(caplog: pytest.LogCaptureFixture) -> None:
    event = build(addons=("ua_parser",), user_agent=None)
    assert "addons" not in event["keen"]
    assert "keen:ua_parser" in messages(caplog)


def test_unknown_addon_is_skipped_with_a_log(caplog: pytest.LogCaptureFixture) -> None:
    assert "addons" not in build(addons=("url_parser",))["keen"]
    assert "url_parser" in messages(caplog)


def test_addon_output_cannot_be_set_by_a_claim(caplog: pytest.LogCaptureFixture) -> None:
    claims = {"sub": SUB, "ip_geo_info": {"city": SECRET}}
    assert "ip_geo_info" not in build(claims, claim_names=("ip_geo_info",), addons=("ip_to_geo",))
    assert "ip_geo_info" in build(claims, claim_names=("ip_geo_info",))
    assert SECRET not in messages(caplog)


@pytest.mark.parametrize(
    "claims",
    [
        {},
        {"name": "Ada"},
        {"sub": None},
        {"sub": ""},
        {"sub": "   "},
        {"sub": 123},
        {"sub": ["auth0|abc"]},
        {"sub": b"auth0|abc"},
        {"sub": "auth0|\ud800"},
        {"sub": "auth0|" + "x" * 10_000},
    ],
)
def test_bad_sub_raises_invalid_claims(claims: dict[str, t.Any]) -> None:
    claims = {**claims, "name": SECRET}
    with pytest.raises(InvalidClaimsError) as info:
        build_signup_event(claims, collection="signups", ip=None, user_agent=None, now=NOW)
    message = str(info.value)
    assert "sub" in message
    assert SECRET not in message and "auth0|" not in message


def test_claims_must_be_a_mapping() -> None:
    with pytest.raises(InvalidClaimsError):
        build_signup_event(
            t.cast(t.Any, [("sub", SUB)]), collection="s", ip=None, user_agent=None, now=NOW
        )


@pytest.mark.parametrize("name", ["userId", "ip", "connection", "user_agent", "keen"])
def test_reserved_fields_cannot_be_overridden(name: str, caplog: pytest.LogCaptureFixture) -> None:
    claims = {"sub": SUB, name: SECRET}
    event = build(claims, claim_names=("name", name), extra={name: SECRET}, ip_mode="none")
    assert SECRET not in json.dumps(event)
    assert event["userId"] == SUB
    assert set(event["keen"]) == {"timestamp", "uniqueness_token"}
    # "ip" stays out even in ip_mode "none", "user_agent" even when there is none.
    event = build(claims, claim_names=(name,), extra={name: SECRET}, ip=None, user_agent=None)
    assert SECRET not in json.dumps(event)
    assert name in messages(caplog) and SECRET not in messages(caplog)


def test_reserved_fields_cannot_be_reached_by_renaming(caplog: pytest.LogCaptureFixture) -> None:
    claims = {"sub": SUB, "user.agent": SECRET, "$ip": SECRET}
    event = build(claims, claim_names=("user.agent", "$ip"), extra={"user.agent": SECRET})
    assert event["user_agent"] == "Mozilla/5.0" and event["ip"] == "203.0.113.7"
    assert SECRET not in messages(caplog)


def test_extra_is_sanitised_and_merged_over_claims() -> None:
    extra = {"plan": "free", "name": "Override", "a.b": 2**64, "when": NOW, "bad": float("nan")}
    event = build(extra=extra)
    assert event["plan"] == "free"
    assert event["name"] == "Override"
    assert event["a_b"] == str(2**64)
    assert event["when"] == "2026-11-26T10:00:00.000Z"
    assert "bad" not in event
    assert list(event)[-1] == "keen"


def test_extra_that_is_not_a_mapping_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    event = build(extra=t.cast(t.Any, ["plan", "free"]))
    assert "plan" not in event and "event_properties" in messages(caplog)


def test_builder_does_not_mutate_its_inputs() -> None:
    claims = {"sub": SUB, "name": "Ada", "address": {"a.b": [1, {"c": 2}]}, "s": {3, 1}}
    extra = {"x.y": {"$z": [(1, 2)]}}
    before = copy.deepcopy((claims, extra))
    build(claims, claim_names=("name", "address", "s"), extra=extra)
    assert (claims, extra) == before


def test_oversize_event_drops_its_largest_properties(caplog: pytest.LogCaptureFixture) -> None:
    big = {f"k{i}": "x" * 9_000 for i in range(60)}  # ~540 kB
    claims = {"sub": SUB, "name": "Ada", "huge": big, "huge2": big}
    event = build(claims, claim_names=("name", "huge", "huge2"), extra={"huge3": big})
    assert len(json.dumps(event)) <= 900_000
    assert event["name"] == "Ada" and event["userId"] == SUB
    assert sum(k in event for k in ("huge", "huge2", "huge3")) == 1
    assert "size limit" in messages(caplog)


# --------------------------------------------------------------------------------------
# Sanitising
# --------------------------------------------------------------------------------------


def sanitize(props: dict[t.Any, t.Any]) -> dict[str, t.Any]:
    clean = sanitize_properties(props)
    assert (
        keen_problems(
            {**clean, "keen": {"timestamp": "2026-11-26T10:00:00.000Z", "uniqueness_token": "t"}}
        )
        == []
    ), clean
    return clean


def test_valid_properties_pass_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    props = {
        "name": "Ada",
        "n": 1,
        "f": 1.5,
        "b": False,
        "none": None,
        "tags": ["a", "b"],
        "nums": [1, 2.5],
        "nested": {"x": {"y": "z"}},
        "empty": {},
        "unicode ключ": "значение 😀",
        "with space": "ok",
    }
    assert sanitize(props) == props
    assert caplog.records == []


def test_dotted_names_are_renamed(caplog: pytest.LogCaptureFixture) -> None:
    clean = sanitize({"https://example.com/roles": SECRET, "a": {"b.c.d": SECRET}})
    assert clean == {"https://example_com/roles": SECRET, "a": {"b_c_d": SECRET}}
    text = messages(caplog)
    assert "https://example.com/roles" in text and "b.c.d" in text and SECRET not in text
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_leading_dollar_is_stripped_or_dropped(caplog: pytest.LogCaptureFixture) -> None:
    clean = sanitize({"$price": 1, "$$x": 2, "$": SECRET, "$$": SECRET, "a$b": 3})
    assert clean == {"price": 1, "x": 2, "a$b": 3}
    assert "'$'" in messages(caplog) and SECRET not in messages(caplog)


def test_empty_and_non_string_names_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    assert sanitize({"": SECRET, "  ": SECRET, 1: SECRET, None: SECRET, "ok": 1}) == {"ok": 1}
    assert SECRET not in messages(caplog)


def test_name_length_boundary(caplog: pytest.LogCaptureFixture) -> None:
    n255, n256, n257 = "a" * 255, "b" * 256, "c" * 257
    assert sanitize({n255: 1, n256: SECRET, n257: SECRET}) == {n255: 1}
    text = messages(caplog)
    assert "256 chars" in text and "257 chars" in text and SECRET not in text
    assert n257 not in text  # long names are shortened in the log


def test_renamed_name_never_overwrites_a_valid_one(caplog: pytest.LogCaptureFixture) -> None:
    assert sanitize({"a.b": SECRET, "a_b": "kept"}) == {"a_b": "kept"}
    assert sanitize({"a_b": "kept", "a.b": SECRET}) == {"a_b": "kept"}
    assert sanitize({"$a": "first", "a.": "x", "a_": "y"}) == {"a": "first", "a_": "y"}
    assert "collides" in messages(caplog) and SECRET not in messages(caplog)


def test_renamed_name_is_still_checked_for_length() -> None:
    assert sanitize({"$" + "a" * 255: 1, "$" + "b" * 256: 2}) == {"a" * 255: 1}


def test_string_length_boundary(caplog: pytest.LogCaptureFixture) -> None:
    clean = sanitize({"ok": "a" * 9_999, "long": SECRET + "b" * 9_990, "huge": "c" * 10**6})
    assert clean["ok"] == "a" * 9_999
    assert len(clean["long"]) == 9_999 and clean["long"].startswith(SECRET)
    assert clean["huge"] == "c" * 9_999
    text = messages(caplog)
    assert "'long' truncated" in text and "'huge' truncated" in text and "'ok'" not in text
    assert SECRET not in text


def test_astral_strings_are_cut_in_utf16_units_and_never_split() -> None:
    clean = sanitize({"e": "😀" * 5_000, "mixed": "a" + "😀" * 5_000, "fits": "😀" * 4_999})
    assert clean["e"] == "😀" * 4_999
    assert clean["mixed"] == "a" + "😀" * 4_999
    assert clean["fits"] == "😀" * 4_999


def test_lone_surrogates_are_replaced(caplog: pytest.LogCaptureFixture) -> None:
    clean = sanitize({"s": "a\ud800b", "n\udfff": 1, "pair": "\U0001f600"})
    assert clean == {"s": "a\ufffdb", "n\ufffd": 1, "pair": "\U0001f600"}
    assert "invalid Unicode" in messages(caplog)


def test_integer_range(caplog: pytest.LogCaptureFixture) -> None:
    big = 2**70 + 12_345
    clean = sanitize(
        {"max": 2**63 - 1, "min": -(2**63), "over": 2**63, "under": -(2**63) - 1, "big": big}
    )
    assert clean == {
        "max": 2**63 - 1,
        "min": -(2**63),
        "over": str(2**63),
        "under": str(-(2**63) - 1),
        "big": str(big),
    }
    assert str(big) not in messages(caplog) and "'big'" in messages(caplog)


def test_gigantic_integer_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    assert sanitize({"g": 10**5_000, "h": 10**20_000}) == {}
    assert "'g' dropped" in messages(caplog)


def test_floats(caplog: pytest.LogCaptureFixture) -> None:
    clean = sanitize(
        {"nan": float("nan"), "inf": float("inf"), "ninf": -math.inf, "big": 1e300, "ok": 0.1}
    )
    assert clean == {"big": "1e+300", "ok": 0.1}
    text = messages(caplog)
    assert "'nan' dropped" in text and "'inf' dropped" in text and "'ninf' dropped" in text


def test_arrays_of_objects_become_json_strings(caplog: pytest.LogCaptureFixture) -> None:
    clean = sanitize(
        {
            "objs": [{"id": 1, "a.b": SECRET}, {"id": 2}],
            "lists": [[1, 2], [3]],
            "mixed": ["x", {"y": 1}],
            "prims": [1, "a", None, True],
        }
    )
    assert json.loads(clean["objs"]) == [{"id": 1, "a_b": SECRET}, {"id": 2}]
    assert json.loads(clean["lists"]) == [[1, 2], [3]]
    assert json.loads(clean["mixed"]) == ["x", {"y": 1}]
    assert clean["prims"] == [1, "a", None, True]
    text = messages(caplog)
    assert "'objs' converted to a JSON string" in text and "'prims'" not in text
    assert SECRET not in text


def test_array_of_objects_too_long_as_json_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    assert sanitize({"objs": [{"k": "x" * 5_000}, {"k": "y" * 5_000}]}) == {}
    assert "'objs' dropped" in messages(caplog)


def test_bad_items_inside_arrays_are_dropped() -> None:
    clean = sanitize({"a": [1, float("nan"), b"x", 2**64, "x" * 20_000, object()]})
    assert clean == {"a": [1, str(2**64), "x" * 9_999]}


class Colour(enum.Enum):
    RED = "red"


class Plan(enum.IntEnum):
    PRO = 2


class Opaque:
    def __repr__(self) -> str:
        return SECRET


def test_non_json_types(caplog: pytest.LogCaptureFixture) -> None:
    u = uuid.UUID(int=1)
    clean = sanitize(
        {
            "when": dt.datetime(2026, 11, 26, 11, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            "naive": dt.datetime(2026, 11, 26, 10),
            "day": dt.date(2026, 11, 26),
            "time": dt.time(10, 30),
            "set": {3, 1, 2},
            "fset": frozenset({"b", "a"}),
            "tuple": (1, "a"),
            "mixedset": {1, "a"},
            "dec": decimal.Decimal("1.25"),
            "decint": decimal.Decimal("3"),
            "decnan": decimal.Decimal("NaN"),
            "decsnan": decimal.Decimal("sNaN"),
            "decinf": decimal.Decimal("-Infinity"),
            "edge": dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            "uuid": u,
            "colour": Colour.RED,
            "plan": Plan.PRO,
            "bytes": SECRET.encode(),
            "bytearray": bytearray(b"x"),
            "object": Opaque(),
            "func": len,
        }
    )
    assert clean["when"] == "2026-11-26T10:00:00.000Z"
    assert clean["naive"] == "2026-11-26T10:00:00.000Z"
    assert clean["day"] == "2026-11-26"
    assert clean["time"] == "10:30:00"
    assert clean["set"] == [1, 2, 3]
    assert clean["fset"] == ["a", "b"]
    assert clean["tuple"] == [1, "a"]
    assert sorted(map(str, clean["mixedset"])) == ["1", "a"]
    assert clean["dec"] == 1.25 and clean["decint"] == 3 and type(clean["decint"]) is int
    assert clean["uuid"] == str(u)
    assert clean["colour"] == "red" and clean["plan"] == 2 and type(clean["plan"]) is int
    for dropped in ("decnan", "decsnan", "decinf", "edge", "bytes", "bytearray", "object", "func"):
        assert dropped not in clean
    text = messages(caplog)
    assert "'bytes' dropped" in text and "'object' dropped" in text
    assert SECRET not in text


def test_string_subclasses_become_plain_strings() -> None:
    class Name(str):
        pass

    clean = sanitize({Name("k"): Name("v")})
    assert clean == {"k": "v"} and type(next(iter(clean))) is str and type(clean["k"]) is str


def test_deep_nesting_is_cut(caplog: pytest.LogCaptureFixture) -> None:
    deep: dict[str, t.Any] = {"leaf": SECRET}
    for _ in range(100):
        deep = {"d": deep}
    clean = sanitize({"deep": deep, "ok": 1})
    assert clean["ok"] == 1
    depth, node = 0, clean["deep"]
    while isinstance(node, dict) and "d" in node:
        depth, node = depth + 1, node["d"]
    assert 8 <= depth < 100
    assert "nested deeper" in messages(caplog) and SECRET not in messages(caplog)


def test_self_referencing_mapping_terminates() -> None:
    loop: dict[str, t.Any] = {"a": 1}
    loop["self"] = loop
    items: list[t.Any] = [1]
    items.append(items)
    clean = sanitize({"loop": loop, "items": items})
    assert clean["loop"]["a"] == 1


def test_sanitize_rejects_a_non_mapping(caplog: pytest.LogCaptureFixture) -> None:
    assert sanitize_properties(t.cast(t.Any, [1, 2])) == {}
    assert caplog.records


def test_sanitize_uses_the_given_logger(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("my.app.keen")
    sanitize_properties({"a.b": 1}, log=log)
    assert [r.name for r in caplog.records] == ["my.app.keen"]


# --------------------------------------------------------------------------------------
# Property tests: random claims always give a Keen-valid event, and no value is logged
# --------------------------------------------------------------------------------------

NASTY_NAMES = [
    "name",
    "email",
    "sub",
    "userId",
    "ip",
    "keen",
    "connection",
    "user_agent",
    "ip_geo_info",
    "parsed_user_agent",
    "a.b",
    "a_b",
    ".",
    "$",
    "$$",
    "$x",
    "$.",
    "",
    " ",
    "https://example.com/claims/roles",
    "a" * 255,
    "b" * 256,
    "$" + "c" * 256,
    "n\ud800",
    "ключ",
    "😀",
]
NASTY_SCALARS: list[t.Any] = [
    None,
    True,
    0,
    -1,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    2**200,
    10**5000,
    0.5,
    -1e300,
    float("nan"),
    float("inf"),
    "",
    SECRET,
    "x" * 9_999,
    "y" * 10_000,
    "😀" * 5_000,
    "\ud800" * 3,
    b"bytes",
    dt.datetime(2026, 1, 1),
    dt.date(2026, 1, 1),
    decimal.Decimal("NaN"),
    uuid.UUID(int=7),
    Colour.RED,
    object(),
]


def random_value(rng: random.Random, depth: int = 0) -> t.Any:
    roll = rng.random()
    if depth > 40 or roll < 0.55:
        return rng.choice(NASTY_SCALARS)
    if roll < 0.7:
        return rng.choice([f"{SECRET}-{rng.random()}", rng.randint(-(2**70), 2**70)])
    if roll < 0.85:
        return {random_name(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    items = [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return rng.choice([list, tuple, list])(items)


def random_name(rng: random.Random) -> t.Any:
    if rng.random() < 0.7:
        return rng.choice(NASTY_NAMES)
    if rng.random() < 0.05:
        return rng.choice([1, None, ("t",)])
    alphabet = "ab.$_ -😀\ud800"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))


def check_random_event(
    claims: dict[t.Any, t.Any],
    claim_names: list[str],
    extra: dict[t.Any, t.Any] | None,
    ip: str | None,
    ip_mode: str,
    addons: list[str],
    user_agent: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.clear()
    event = build_signup_event(
        claims,
        collection="signups",
        ip=ip,
        user_agent=user_agent,
        claim_names=claim_names,
        ip_mode=ip_mode,
        addons=addons,
        now=NOW,
        extra=extra,
    )
    assert keen_problems(event) == [], (claims, extra)
    assert event["userId"] == keen_text(claims["sub"])
    assert event["keen"]["uniqueness_token"] == uniqueness_token("signups", claims["sub"])
    if ip_mode == "none":
        assert "ip" not in event
    text = messages(caplog)
    assert SECRET not in text
    if ip:
        assert ip not in text


IPS = [None, "", "203.0.113.7", "2001:db8::1", "::ffff:198.51.100.9", "999.9.9.9", "1.2.3.4.5"]


def test_random_claims_always_give_a_keen_valid_event(caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(20261126)
    for _ in range(400):
        claims = {random_name(rng): random_value(rng) for _ in range(rng.randint(0, 8))}
        claims["sub"] = rng.choice([SUB, "google-oauth2|1", "nopipe", "a.b|$c"])
        names = [n for n in claims if isinstance(n, str)] + NASTY_NAMES
        claim_names = rng.sample(names, rng.randint(0, len(names)))
        extra = (
            {random_name(rng): random_value(rng) for _ in range(rng.randint(0, 5))}
            if rng.random() < 0.7
            else None
        )
        check_random_event(
            claims,
            claim_names,
            extra,
            rng.choice(IPS),
            rng.choice(["full", "anonymize", "none"]),
            rng.sample(["ip_to_geo", "ua_parser"], rng.randint(0, 2)),
            rng.choice([None, "", "Mozilla/5.0", "u" * 12_000]),
            caplog,
        )


try:
    from hypothesis import HealthCheck
    from hypothesis import example
    from hypothesis import given
    from hypothesis import settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - the seeded random test above still runs
    pass
else:
    names_st = st.one_of(
        st.sampled_from(NASTY_NAMES), st.text(alphabet="ab.$_ ~😀\ud800", max_size=10)
    )
    # Hypothesis reprs its strategies, and a 5,000-digit int has no repr: keep it out.
    reprable = [v for v in NASTY_SCALARS if not (type(v) is int and v > 2**300)]
    scalars_st = st.one_of(
        st.sampled_from(reprable),
        st.integers(min_value=2**63 - 2, max_value=2**300),
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(),
        st.binary(max_size=4),
        st.datetimes(),
        st.integers(min_value=9_990, max_value=10_010).map(lambda n: "s" * n),
    )
    values_st = st.recursive(
        scalars_st,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(names_st, children, max_size=4),
        ),
        max_leaves=20,
    )

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        claims=st.dictionaries(names_st, values_st, max_size=8),
        sub=st.text(min_size=1, max_size=40).filter(
            lambda s: bool(s.strip()) and not any("\ud800" <= c <= "\udfff" for c in s)
        ),
        extra=st.one_of(st.none(), st.dictionaries(names_st, values_st, max_size=5)),
        picks=st.lists(names_st, max_size=10),
        ip=st.sampled_from(IPS),
        ip_mode=st.sampled_from(["full", "anonymize", "none"]),
        addons=st.lists(st.sampled_from(["ip_to_geo", "ua_parser"]), max_size=3),
        user_agent=st.one_of(st.none(), st.text(max_size=20)),
    )
    def test_hypothesis_claims_always_give_a_keen_valid_event(
        claims: dict[str, t.Any],
        sub: str,
        extra: dict[str, t.Any] | None,
        picks: list[str],
        ip: str | None,
        ip_mode: str,
        addons: list[str],
        user_agent: str | None,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        claims = {**claims, "sub": sub}
        check_random_event(
            claims, list(claims) + picks, extra, ip, ip_mode, addons, user_agent, caplog
        )

    _CLAIM_NAMES = st.sampled_from(
        [
            "name",
            "nickname",
            "email",
            "ip",
            "keen",
            "a.b",
            "$x",
            " ",
            "n" * 256,
            "ünï",
            "given_name",
        ]
    )
    _CLAIM_VALUES = st.one_of(
        st.text(max_size=40),
        st.sampled_from(["Ada", "Zoë", "\ud800", "x" * 6000, "y" * 10_001]),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.none(),
    )

    @settings(max_examples=300, deadline=None)
    @given(
        claims=st.dictionaries(_CLAIM_NAMES, _CLAIM_VALUES, max_size=6),
        extra=st.none() | st.dictionaries(_CLAIM_NAMES, _CLAIM_VALUES, max_size=4),
    )
    @example(claims={"name": "y" * 10_001}, extra=None)
    @example(claims={"name": "\ud800"}, extra=None)
    @example(claims={"a.b": "Ada", "name": 2**70}, extra=None)
    @example(claims={"name": "Ada"}, extra={"name": "Bob", "ip": "1.2.3.4"})
    @example(claims={}, extra={"plan": "y" * 10_001})
    def test_the_fast_path_for_plain_claims_builds_what_the_sanitiser_would(
        claims: dict[str, t.Any], extra: dict[str, t.Any] | None
    ) -> None:
        """Claims and extra properties valid as they are skip the sanitiser; the event
        must not differ from the one the sanitiser builds."""
        from flask_keen_signup import events

        names = list(claims)
        kwargs: dict[str, t.Any] = dict(
            collection="signups",
            ip=None,
            user_agent=None,
            claim_names=names,
            now=dt.datetime(2026, 11, 26, tzinfo=dt.timezone.utc),
            extra=extra,
        )
        full = {"sub": "auth0|p", **claims}
        fast = build_signup_event(full, **kwargs)
        original = events._valid_as_is
        events._valid_as_is = lambda props, reserved: False  # type: ignore[assignment]
        try:
            slow = build_signup_event(full, **kwargs)
        finally:
            events._valid_as_is = original
        assert fast == slow


def test_keen_text_replaces_control_and_bidi_characters_visibly() -> None:
    """DESIGN §3: line breaks become a space, the other controls and the bidi overrides
    and isolates U+FFFD; tab and every printable character (any script) are kept."""
    assert keen_text("a\r\nb\nc\rd\x0be\x0cf\x85g") == "a b c d e f g"
    assert keen_text("\x1b]52;c;eA==\x07") == "\ufffd]52;c;eA==\ufffd"
    assert keen_text("\x00\x7f\x9b\u202a\u202e\u2066\u2069") == "\ufffd" * 7
    kept = "tab\there, Zoë, 漢字, 😀, \u200f\u2028"  # marks and separators: not in the rule
    assert keen_text(kept) is kept
    event = build_signup_event(
        {"sub": "auth0|x\x1b", "name": "A\nB", "k\u202e": {"v": ["\x07"]}},
        collection="signups",
        ip=None,
        user_agent="UA\x1b[0m",
        claim_names=["name", "k\u202e"],
        now=NOW,
        extra={"e\n": "\u2066"},
    )
    assert event["userId"] == "auth0|x\ufffd"
    assert event["name"] == "A B" and event["k\ufffd"] == {"v": ["\ufffd"]}
    assert event["user_agent"] == "UA\ufffd[0m" and event["e "] == "\ufffd"
    assert keen_problems(event) == []
