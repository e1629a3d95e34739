"""Waiting in tests: bounded polls, never a bare sleep that hopes it was long enough."""

from __future__ import annotations

import time
import typing as t

import pytest

T = t.TypeVar("T")


def wait_until(
    predicate: t.Callable[[], object], timeout: float = 30.0, *, interval: float = 0.02
) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass; return whether it
    became truthy (the caller asserts, with its own message)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def wait_for(
    predicate: t.Callable[[], T], timeout: float, what: str, *, interval: float = 0.05
) -> T:
    """Poll ``predicate`` until it returns something truthy and return it; fail the test
    with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
