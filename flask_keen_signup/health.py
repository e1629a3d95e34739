"""An app's delivery state (:func:`health_of`) and its verdict: ``ok``, ``degraded`` or
``failing``, for load balancers and uptime checks.

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
import logging
import os
import time
import typing as t

from ._text import printable

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from .state import SignupState

logger = logging.getLogger(__name__)

OK = "ok"
DEGRADED = "degraded"
FAILING = "failing"


@dataclasses.dataclass(frozen=True)
class HealthThresholds:
    """The ``KEEN_SIGNUP_HEALTH_*`` keys (a field's key is its name in capitals), in
    seconds; ``max_dead`` is a count."""

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

    values: dict[str, t.Any] = {}
    for field in dataclasses.fields(HealthThresholds):
        key = f"KEEN_SIGNUP_HEALTH_{field.name.upper()}"
        integer = isinstance(field.default, int)
        raw = app.config.get(key, field.default)
        values[field.name] = _as_number(key, raw, minimum=0, maximum=MAX_RETENTION, integer=integer)
    thresholds = HealthThresholds(**values)
    if thresholds.failing_pending_age < thresholds.max_pending_age:
        raise ConfigurationError(
            "KEEN_SIGNUP_HEALTH_FAILING_PENDING_AGE must be >= KEEN_SIGNUP_HEALTH_MAX_PENDING_AGE"
        )
    return thresholds


def health_of(state: SignupState) -> dict[str, t.Any]:
    """One app's delivery state and its verdict (see :meth:`KeenSignup.health`).

    Never raises for a broken store: the counts are then ``None`` and ``store_error``
    says what is wrong (``None`` when the store answers).
    """
    from . import database_file_watch

    try:
        status = dataclasses.asdict(state.sender.status())
        health = {**status.pop("outbox"), **status, "store_error": None}
    except Exception as exc:  # noqa: BLE001 - a health check reports, it does not raise
        from .delivery import OutboxStats

        error = printable(str(exc), limit=500)
        health = {
            **dict.fromkeys(field.name for field in dataclasses.fields(OutboxStats)),
            "circuit": "-",
            "circuit_until": None,
            "last_error": error,
            "running": bool(state.sender.running),
            "store_error": f"{type(exc).__name__}: {error}",
        }
    lost = state.unrecorded.read()
    try:
        spooled, oldest = state.spool.stats()
    except OSError as exc:  # an unreadable spool directory: say so, never raise
        logger.error("cannot read the spool directory: %s", exc)
        spooled, oldest = -1, None
    path = os.path.abspath(state.database.path)
    replaced = [r for r in database_file_watch.replacements if r.path == path]
    last = replaced[-1] if replaced else None
    health.update(
        spooled=spooled,
        oldest_spooled_age=None if oldest is None else max(0.0, time.time() - oldest),
        store_degraded_since=state.spool.degraded_since,
        database_replaced=None
        if last is None
        else {"how": last.how, "at": last.at, "salvaged": last.salvaged, "count": len(replaced)},
        not_recorded=0 if lost is None else lost.count,
        not_recorded_since=None if lost is None else lost.first_at,
        database_unrecovered=_unrecovered(state),
    )
    health["ok"] = (
        health["store_error"] is None
        and spooled == 0
        and health["not_recorded"] == 0
        and not health.get("round_errors")
        and health.get("circuit") != "open"
        and (bool(health.get("running")) or not state.settings.enabled)
    )
    health["verdict"], health["reasons"] = verdict(health, state.health_thresholds)
    return health


def _unrecovered(state: SignupState) -> dict[str, t.Any] | None:
    """What a damaged SQLite file lost for good (see :mod:`.salvage`), or None."""
    from .salvage import describe_unrecovered
    from .salvage import unrecovered

    if not state.parts.uses_database:  # the outbox is not in the SQLite file
        return None
    try:
        with state.database.reading() as conn:
            record = unrecovered(conn)
    except Exception:  # noqa: BLE001 - the store error is reported by the caller
        return None
    return None if record is None else {**record, "summary": describe_unrecovered(record)}


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
