"""The Keen emulator's ``queries/count`` with ``interval`` and ``group_by`` (keen-api.md §4),
the shapes Keen answers and the official ``keen`` client reads, over real HTTP."""

from __future__ import annotations

import json
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
import requests

from flask_keen_signup.testing import KeenEmulator

PID, WRITE, READ = "demo-project", "demo-write-key", "demo-read-key"
TIMEOUT = 30


@pytest.fixture
def keen() -> t.Iterator[KeenEmulator]:
    with KeenEmulator() as emulator:
        yield emulator


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def count(keen: KeenEmulator, **params: t.Any) -> requests.Response:
    return requests.get(
        f"{keen.url}/3.0/projects/{PID}/queries/count",
        params={"event_collection": "signups", **params},
        headers={"Authorization": READ},
        timeout=TIMEOUT,
    )


@pytest.fixture
def today(keen: KeenEmulator) -> datetime:
    """Six signups: 3 today (2 newsletter, 1 without attribution), 2 yesterday (ads,
    newsletter), 1 five days ago (ads)."""
    now = datetime.now(timezone.utc)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    rows = [
        (midnight, "newsletter"),
        (midnight + timedelta(seconds=1), "newsletter"),
        (midnight + timedelta(seconds=2), None),
        (midnight - timedelta(hours=12), "ads"),
        (midnight - timedelta(hours=1), "newsletter"),
        (midnight - timedelta(days=5) + timedelta(hours=3), "ads"),
    ]
    events = []
    for n, (moment, source) in enumerate(rows):
        event: dict[str, t.Any] = {"userId": f"u{n}", "keen": {"timestamp": iso(moment)}}
        if source:
            event["attribution"] = {"source": source, "medium": "email"}
        events.append(event)
    answer = requests.post(
        f"{keen.url}/3.0/projects/{PID}/events",
        data=json.dumps({"signups": events}),
        headers={"Authorization": WRITE, "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200
    return midnight


def test_daily_interval(keen: KeenEmulator, today: datetime) -> None:
    result = count(keen, timeframe="this_7_days", interval="daily").json()["result"]
    assert len(result) == 7
    assert [r["value"] for r in result] == [0, 1, 0, 0, 0, 2, 3]
    assert result[-1]["timeframe"] == {
        "start": iso(today),
        "end": iso(today + timedelta(days=1)),
    }
    for earlier, later in zip(result, result[1:], strict=False):
        assert earlier["timeframe"]["end"] == later["timeframe"]["start"]


def test_group_by(keen: KeenEmulator, today: datetime) -> None:
    result = count(keen, timeframe="this_7_days", group_by="attribution.source").json()["result"]
    assert result == [
        {"attribution.source": "ads", "result": 2},
        {"attribution.source": "newsletter", "result": 3},
        {"attribution.source": None, "result": 1},
    ]
    names = json.dumps(["attribution.source", "attribution.medium"])
    two = count(keen, timeframe="this_7_days", group_by=names).json()["result"]
    assert {"attribution.source": "ads", "attribution.medium": "email", "result": 2} in two


def test_interval_and_group_by(keen: KeenEmulator, today: datetime) -> None:
    result = count(
        keen, timeframe="this_2_days", interval="daily", group_by="attribution.source"
    ).json()["result"]
    assert [r["timeframe"]["start"] for r in result] == [iso(today - timedelta(days=1)), iso(today)]
    yesterday, this_day = (r["value"] for r in result)
    assert yesterday == [
        {"attribution.source": "ads", "result": 1},
        {"attribution.source": "newsletter", "result": 1},
    ]
    assert this_day == [
        {"attribution.source": "newsletter", "result": 2},
        {"attribution.source": None, "result": 1},
    ]


def test_every_n_units_timezone_and_absolute_frames(keen: KeenEmulator, today: datetime) -> None:
    window = json.dumps(
        {"start": iso(today - timedelta(days=2)), "end": iso(today + timedelta(days=1))}
    )
    result = count(keen, timeframe=window, interval="every_12_hours").json()["result"]
    assert len(result) == 6
    assert sum(r["value"] for r in result) == 5
    local = count(keen, timeframe="this_1_days", interval="hourly", timezone="-3600").json()
    assert local["result"][0]["timeframe"]["start"].endswith("-01:00")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"interval": "daily"}, "TimeframeDefinitionError"),
        ({"interval": "fortnightly", "timeframe": "this_7_days"}, "InvalidIntervalError"),
        ({"interval": "every_0_days", "timeframe": "this_7_days"}, "InvalidIntervalError"),
        ({"interval": "minutely", "timeframe": "this_100_years"}, "InvalidIntervalError"),
        ({"group_by": "[1]"}, "InvalidGroupByError"),
        ({"group_by": "[not json"}, "InvalidGroupByError"),
    ],
)
def test_bad_queries_get_keen_errors(
    keen: KeenEmulator, params: dict[str, str], code: str
) -> None:
    answer = count(keen, **params)
    assert answer.status_code == 400
    assert answer.json()["error_code"] == code


def test_the_official_keen_client_reads_the_shapes(keen: KeenEmulator, today: datetime) -> None:
    import keen as keen_client

    client = keen_client.KeenClient(
        project_id=PID, read_key=READ, base_url=keen.url, write_key=WRITE
    )
    series = client.count("signups", timeframe="this_7_days", interval="daily")
    assert [r["value"] for r in series][-2:] == [2, 3]
    groups = client.count("signups", timeframe="this_7_days", group_by="attribution.source")
    assert {g["attribution.source"]: g["result"] for g in groups}["ads"] == 2
