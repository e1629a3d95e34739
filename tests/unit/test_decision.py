"""The signup decision (``flask_keen_signup.decision.decide``): one table, every case."""

from __future__ import annotations

import datetime as dt
import typing as t

import pytest

from flask_keen_signup.decision import Verdict
from flask_keen_signup.decision import decide
from flask_keen_signup.stores import MarkerState

SINCE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
BEFORE = SINCE - dt.timedelta(seconds=1)
AFTER = SINCE + dt.timedelta(days=3)

CONFIRMED, PENDING = MarkerState.CONFIRMED, MarkerState.PENDING
RETURNING, MARKED_ONLY, SIGNUP = Verdict.RETURNING, Verdict.MARKED_ONLY, Verdict.SIGNUP

# (case, keyword arguments, verdict)
CASES: list[tuple[str, dict[str, t.Any], Verdict]] = [
    ("nothing known, no SINCE", {"since": None}, SIGNUP),
    ("no SINCE, created long ago", {"since": None, "created_at": BEFORE}, SIGNUP),
    ("created after SINCE", {"since": SINCE, "created_at": AFTER}, SIGNUP),
    ("created exactly at SINCE", {"since": SINCE, "created_at": SINCE}, SIGNUP),
    ("created before SINCE", {"since": SINCE, "created_at": BEFORE}, MARKED_ONLY),
    ("SINCE but no creation time", {"since": SINCE, "created_at": None}, SIGNUP),
    ("known (memory, ID token claim, Auth0)", {"since": None, "known": True}, RETURNING),
    (
        "known and created before SINCE",
        {"since": SINCE, "created_at": BEFORE, "known": True},
        RETURNING,
    ),
    ("confirmed marker", {"since": None, "marker": CONFIRMED}, RETURNING),
    (
        "confirmed marker, created before SINCE",
        {"since": SINCE, "created_at": BEFORE, "marker": CONFIRMED},
        RETURNING,
    ),
    (
        "confirmed marker, sync mode",
        {"since": None, "marker": CONFIRMED, "pending_is_final": False},
        RETURNING,
    ),
    ("pending marker: durably queued", {"since": None, "marker": PENDING}, RETURNING),
    (
        "pending marker, sync mode: the claim decides",
        {"since": None, "marker": PENDING, "pending_is_final": False},
        SIGNUP,
    ),
    (
        "pending marker, sync mode, created before SINCE",
        {"since": SINCE, "created_at": BEFORE, "marker": PENDING, "pending_is_final": False},
        MARKED_ONLY,
    ),
    (
        "no marker, created after SINCE",
        {"since": SINCE, "created_at": AFTER, "marker": None},
        SIGNUP,
    ),
]


@pytest.mark.parametrize(("kwargs", "verdict"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(kwargs: dict[str, t.Any], verdict: Verdict) -> None:
    assert decide(**kwargs) is verdict


def test_verdicts_name_the_login_outcomes_they_become() -> None:
    """The tracker returns ``TrackOutcome(verdict.value)`` for a verdict that is not a signup."""
    from flask_keen_signup.tracker import TrackOutcome

    assert TrackOutcome(RETURNING.value) is TrackOutcome.RETURNING
    assert TrackOutcome(MARKED_ONLY.value) is TrackOutcome.MARKED_ONLY


CLAIMS_CASES: list[tuple[str, dict[str, t.Any], str | None, dt.datetime | None]] = [
    ("the named claim", {"c": "2025-12-31T23:59:59Z", "created_at": 0}, "c", BEFORE),
    ("the named claim absent: created_at", {"created_at": "2026-01-04T00:00:00Z"}, "c", AFTER),
    ("a namespaced claim", {"https://x.io/created_at": "2026-01-01T00:00:00Z"}, None, SINCE),
    ("none", {"sub": "auth0|u"}, None, None),
]


@pytest.mark.parametrize(
    ("claims", "name", "expected"),
    [c[1:] for c in CLAIMS_CASES],
    ids=[c[0] for c in CLAIMS_CASES],
)
def test_created_at_from_claims(
    claims: dict[str, t.Any], name: str | None, expected: dt.datetime | None
) -> None:
    from flask_keen_signup.decision import created_at_from_claims

    assert created_at_from_claims(claims, name) == expected
