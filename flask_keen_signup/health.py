"""The health verdict: ``ok``, ``degraded`` or ``failing``, for load balancers and uptime checks.

:meth:`KeenSignup.health` returns the delivery state (pending, dead, circuit...); a check
needs one word it can act on. The rules, each from a config key (seconds):

* ``degraded`` when signups were not recorded at all (``not_recorded``: neither the store
  nor the spool could take them, e.g. a full disk; it stays until someone acknowledges it
  with ``flask keen-signup status --acknowledge``), when this process's sender keeps failing
  its rounds (``round_errors``), when the oldest pending event is older than
  ``KEEN_SIGNUP_HEALTH_MAX_PENDING_AGE`` (default 300: five minutes of a Keen outage is
  worth a look), when dead letters exist (more than ``KEEN_SIGNUP_HEALTH_MAX_DEAD``,
  default 0: each is a signup Keen refused, to replay by hand), or when the circuit breaker
  is open or half-open (Keen is failing whole requests);
* ``failing`` when the oldest pending event is older than
  ``KEEN_SIGNUP_HEALTH_FAILING_PENDING_AGE`` (default 3600), when the circuit has stayed
  open for longer than ``KEEN_SIGNUP_HEALTH_MAX_CIRCUIT_OPEN`` (default 900), or when the
  state itself cannot be read (``error`` in the health dict: an unusable database).

Whether this process's sender thread runs is not judged: ``flask keen-signup status`` runs in
its own process, and work that is stuck shows as an ageing oldest pending event anyway.

Signups keep being accepted in every case (they wait in the durable outbox): ``failing``
says the analytics pipeline needs a person, not that logins fail. Whether a load balancer
should take an app out of rotation for it is the operator's choice (``docs/metrics.md``
shows a ``/healthz`` that answers 503 on ``failing`` only).
"""

from __future__ import annotations

import dataclasses
import math
import time
import typing as t

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

OK = "ok"
DEGRADED = "degraded"
FAILING = "failing"
VERDICTS = (OK, DEGRADED, FAILING)


@dataclasses.dataclass(frozen=True)
class HealthThresholds:
    """The ``KEEN_SIGNUP_HEALTH_*`` keys, in seconds (``max_dead`` is a count)."""

    max_pending_age: float = 300.0
    failing_pending_age: float = 3600.0
    max_dead: int = 0
    max_circuit_open: float = 900.0


def load_health_thresholds(app: Flask) -> HealthThresholds:
    """Read and validate the ``KEEN_SIGNUP_HEALTH_*`` keys.

    :raises ConfigurationError: naming the bad key.
    """
    from ._config_values import _as_number
    from .config import MAX_RETENTION
    from .exceptions import ConfigurationError

    default = HealthThresholds()
    values: dict[str, float] = {}
    for field, key in (
        ("max_pending_age", "KEEN_SIGNUP_HEALTH_MAX_PENDING_AGE"),
        ("failing_pending_age", "KEEN_SIGNUP_HEALTH_FAILING_PENDING_AGE"),
        ("max_dead", "KEEN_SIGNUP_HEALTH_MAX_DEAD"),
        ("max_circuit_open", "KEEN_SIGNUP_HEALTH_MAX_CIRCUIT_OPEN"),
    ):
        raw = app.config.get(key, getattr(default, field))
        try:
            finite = math.isfinite(float(raw))
        except (TypeError, ValueError, OverflowError):
            finite = True  # not a number at all: _as_number says so
        if not finite:
            raise ConfigurationError(f"{key} must be a finite number, got {raw!r}")
        values[field] = _as_number(
            key, raw, minimum=0, maximum=MAX_RETENTION, integer=field == "max_dead"
        )
    if values["failing_pending_age"] < values["max_pending_age"]:
        raise ConfigurationError(
            "KEEN_SIGNUP_HEALTH_FAILING_PENDING_AGE must be >= "
            "KEEN_SIGNUP_HEALTH_MAX_PENDING_AGE"
        )
    return HealthThresholds(
        max_pending_age=values["max_pending_age"],
        failing_pending_age=values["failing_pending_age"],
        max_dead=int(values["max_dead"]),
        max_circuit_open=values["max_circuit_open"],
    )


def verdict(
    health: t.Mapping[str, t.Any],
    thresholds: HealthThresholds,
    *,
    now: float | None = None,
) -> tuple[str, list[str]]:
    """The verdict for a health dict and why (one short reason per rule that fired)."""
    now = time.time() if now is None else now
    failing: list[str] = []
    degraded: list[str] = []
    if health.get("error") or health.get("store_error"):
        failing.append("the delivery state cannot be read")
    spooled = health.get("spooled")
    if isinstance(spooled, int) and spooled < 0:
        degraded.append("the local spool cannot be read")
    elif isinstance(spooled, int) and spooled > 0:
        degraded.append(f"{spooled} signup(s) spooled: the marker store is slow or down")
    if health.get("database_replaced"):
        degraded.append("the database file was replaced under the app")
    lost = health.get("not_recorded")
    if isinstance(lost, int) and lost > 0:
        degraded.append(
            f"{lost} signup(s) not recorded (see the log for who; then "
            "`flask keen-signup status --acknowledge`)"
        )
    rounds = health.get("round_errors")
    if isinstance(rounds, int) and rounds > 0:
        degraded.append(f"the sender's last {rounds} round(s) failed: {health.get('last_error')}")
    damaged = health.get("database_unrecovered")
    if damaged:
        degraded.append(str(damaged.get("summary", "rows lost with a damaged database file")))
    age = health.get("oldest_pending_age")
    if isinstance(age, (int, float)):
        if age > thresholds.failing_pending_age:
            failing.append(f"oldest pending event is {age:.0f}s old")
        elif age > thresholds.max_pending_age:
            degraded.append(f"oldest pending event is {age:.0f}s old")
    dead = health.get("dead")
    if isinstance(dead, int) and dead > thresholds.max_dead:
        degraded.append(f"{dead} dead letter(s)")
    circuit = health.get("circuit")
    if circuit in ("open", "half-open"):
        since = health.get("circuit_since")
        open_for = now - since if isinstance(since, (int, float)) else 0.0
        if open_for > thresholds.max_circuit_open:
            failing.append(f"circuit open for {open_for:.0f}s")
        else:
            degraded.append(f"circuit {circuit}")
    if failing:
        return FAILING, failing + degraded
    if degraded:
        return DEGRADED, degraded
    return OK, []


def with_verdict(
    health: dict[str, t.Any], thresholds: HealthThresholds, *, now: float | None = None
) -> dict[str, t.Any]:
    """``health`` plus ``verdict`` and ``reasons``."""
    result, reasons = verdict(health, thresholds, now=now)
    health["verdict"] = result
    health["reasons"] = reasons
    return health
