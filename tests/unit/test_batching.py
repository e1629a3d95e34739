"""The pure batching rules of the sender (:mod:`flask_keen_signup.delivery.batching`).

No outbox, no thread, no HTTP: rows in, requests out. What the sender does with Keen's
answers is in ``test_outcomes.py``; the whole path over real HTTP in ``test_sender.py``.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_keen_signup.delivery import OutboxRow
from flask_keen_signup.delivery.batching import encode_rows
from flask_keen_signup.delivery.batching import group_by_collection
from flask_keen_signup.delivery.batching import halves
from flask_keen_signup.delivery.batching import plan_requests
from flask_keen_signup.delivery.batching import request_body
from flask_keen_signup.delivery.batching import too_big_reason
from flask_keen_signup.keen import MAX_EVENT_BYTES


def row(n: int, collection: str = "signups", size: int = 0) -> OutboxRow:
    body = {"userId": f"auth0|u{n}", "pad": "x" * size}
    return OutboxRow(
        id=n,
        collection=collection,
        user_id=f"auth0|u{n}",
        uniqueness_token=f"t{n}",
        body_json=json.dumps(body, separators=(",", ":")),
        attempts=1,
        created_at=0.0,
        next_attempt_at=0.0,
        last_error=None,
    )


def test_encode_rows_sets_apart_events_over_keens_limit() -> None:
    small, big, edge = row(1), row(2, size=MAX_EVENT_BYTES), row(3)
    sendable, too_big = encode_rows([small, big, edge])
    assert [r.id for r, _ in sendable] == [1, 3]
    assert sendable[0][1] == small.body_json.encode("utf-8")
    assert [(r.id, size) for r, size in too_big] == [(2, len(big.body_json.encode()))]
    assert too_big_reason(too_big[0][1]).startswith(f"event is {too_big[0][1]} bytes")


def test_encode_rows_counts_utf8_bytes_not_characters() -> None:
    body_json = json.dumps({"n": "é" * 60}, ensure_ascii=False)  # 60 characters, 120 bytes
    wide = OutboxRow(**{**row(1).__dict__, "body_json": body_json})
    sendable, too_big = encode_rows([wide], max_event_bytes=100)
    assert sendable == [] and too_big[0][1] == len(wide.body_json.encode("utf-8")) > 100


def test_group_by_collection_keeps_first_appearance_and_row_order() -> None:
    items, _ = encode_rows([row(1, "b"), row(2, "a"), row(3, "b"), row(4, "a")])
    groups = group_by_collection(items)
    assert list(groups) == ["b", "a"]
    assert [[r.id for r, _ in g] for g in groups.values()] == [[1, 3], [2, 4]]


def test_plan_requests_caps_the_count() -> None:
    items, _ = encode_rows([row(n) for n in range(7)])
    plan = plan_requests(items, max_bytes=5_000_000, max_events=3)
    assert [[r.id for r, _ in chunk] for chunk in plan] == [[0, 1, 2], [3, 4, 5], [6]]


def test_plan_requests_caps_the_body_and_gives_a_lone_big_event_its_own_request() -> None:
    items, _ = encode_rows([row(1, size=400), row(2, size=400), row(3, size=2000), row(4)])
    plan = plan_requests(items, max_bytes=1400, max_events=500)
    assert [[r.id for r, _ in chunk] for chunk in plan] == [[1, 2], [3], [4]]
    sizes = [len(request_body(chunk)[1]) for chunk in plan]
    assert sizes[0] <= 1400 and sizes[2] <= 1400 and sizes[1] > 1400
    # A tighter cap splits the pair: the envelope Keen's body needs is counted too.
    tight = plan_requests(items, max_bytes=1000, max_events=500)
    assert [[r.id for r, _ in chunk] for chunk in tight] == [[1], [2], [3], [4]]


def test_halves_split_down_to_one_event() -> None:
    items, _ = encode_rows([row(n) for n in range(5)])
    first, second = halves(items)
    assert ([r.id for r, _ in first], [r.id for r, _ in second]) == ([0, 1], [2, 3, 4])
    one, other = halves(items[:1])
    assert one == [] and [r.id for r, _ in other] == [0]


def test_request_body_is_the_stored_json_byte_for_byte() -> None:
    items, _ = encode_rows([row(1), row(2)])
    collection, body = request_body(items)
    assert collection == "signups"
    assert json.loads(body) == {"signups": [json.loads(r.body_json) for r, _ in items]}
    for _, data in items:
        assert data in body


def test_request_body_refuses_what_plan_requests_never_makes() -> None:
    with pytest.raises(ValueError, match="empty"):
        request_body([])
    items, _ = encode_rows([row(1, "a"), row(2, "b")])
    with pytest.raises(ValueError, match="one collection"):
        request_body(items)


@given(
    sizes=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 600)), max_size=40
    ),
    max_bytes=st.integers(200, 3000),
    max_events=st.integers(1, 10),
)
def test_plan_requests_sends_every_row_once_within_the_caps(
    sizes: list[tuple[str, int]], max_bytes: int, max_events: int
) -> None:
    rows = [row(n, collection, size) for n, (collection, size) in enumerate(sizes)]
    items, _ = encode_rows(rows)
    plan = plan_requests(items, max_bytes=max_bytes, max_events=max_events)
    assert sorted(r.id for chunk in plan for r, _ in chunk) == [r.id for r in rows]
    for chunk in plan:
        collection, body = request_body(chunk)  # one collection per request
        assert 1 <= len(chunk) <= max_events
        assert len(body) <= max_bytes or len(chunk) == 1
        ids = [r.id for r, _ in chunk]
        assert ids == sorted(ids)  # rows keep their order within a collection
