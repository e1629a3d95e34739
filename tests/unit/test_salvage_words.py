"""What a damaged SQLite file lost, in words (``salvage.describe_unrecovered``)."""

from __future__ import annotations

import typing as t

import pytest

from flask_keen_signup.salvage import describe_unrecovered

SUFFIX = " lost with a damaged database file"

CASES: list[tuple[dict[str, t.Any], str]] = [
    ({"events": 2, "at": 1.0}, "2 queued event(s)"),
    (
        {"markers": 41, "events": 2, "dead_letters": 1},
        "2 queued event(s), 1 dead letter(s), 41 marker(s)",
    ),
    ({"events": -1, "markers": 0}, "an unknown number of queued event(s)"),
    ({"dead_letters": -1, "markers": 3}, "an unknown number of dead letter(s), 3 marker(s)"),
]


@pytest.mark.parametrize(("record", "words"), CASES)
def test_the_lost_rows_are_said_in_a_fixed_order_zeros_left_out(
    record: dict[str, t.Any], words: str
) -> None:
    assert describe_unrecovered(record) == words + SUFFIX
