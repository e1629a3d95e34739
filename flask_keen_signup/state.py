"""The per-app state of the extension, and what reads it: ``health()`` and ``status``.

Its own module so that the CLI, the metrics collector and the privacy commands can read an
app's state without importing the extension (which imports them: no import cycle).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import typing as t

from flask import current_app
from flask import has_app_context

from ._text import printable
from .health import HealthThresholds

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from .attribution import AttributionCapture
    from .backends import Parts
    from .config import Settings
    from .database import Database
    from .delivery import Outbox
    from .delivery.sender import Sender
    from .keen import KeenClient
    from .spool import Spool
    from .stores import MarkerStore
    from .tracker import Tracker
    from .unrecorded import Unrecorded

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SignupState:
    """Everything one app's extension owns. Lives in ``app.extensions["keen_signup"]``;
    read it with :func:`signup_state`, not by that key: its fields are for tests and
    operations tools (the sender, the outbox, the settings), not a stable API."""

    settings: Settings
    tracker: Tracker
    client: KeenClient
    outbox: Outbox
    database: Database
    sender: Sender
    store: MarkerStore
    #: The backend's parts (:mod:`.backends`): what the store and outbox can do.
    parts: Parts
    #: Signups the login path could not hand to the store in time (guarantee 3).
    spool: Spool | None = None
    #: The first-touch capture (``KEEN_SIGNUP_ATTRIBUTION``), or ``None`` when it is off.
    attribution: AttributionCapture | None = None
    #: Signups neither the store nor the spool could take, counted until acknowledged.
    unrecorded: Unrecorded | None = None
    #: ``KEEN_SIGNUP_HEALTH_*``: what :meth:`KeenSignup.health`'s verdict is judged on.
    health_thresholds: HealthThresholds = dataclasses.field(default_factory=HealthThresholds)


def signup_state(app: Flask | None = None) -> SignupState:
    """The extension's state for ``app`` (default: the current app).

    For tests and operations tools: ``signup_state(app).sender.flush(10)``,
    ``signup_state(app).outbox.stats()``. Raises ``RuntimeError`` if ``init_app`` was
    not called on ``app``, or, without ``app``, outside an app context.
    """
    if app is None:
        if not has_app_context():
            raise RuntimeError(
                "signup_state() outside an app context: pass the app, signup_state(app)"
            )
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        return t.cast(SignupState, app.extensions["keen_signup"])
    except KeyError:
        raise RuntimeError(
            "KeenSignup is not initialised on this app: call KeenSignup(app) or init_app(app)"
        ) from None


def health_of(state: SignupState) -> dict[str, t.Any]:
    """Flat delivery status of one app (see :meth:`KeenSignup.health`).

    Never raises for a broken store: the counts are then ``None`` and ``store_error``
    says what is wrong (``None`` when the store answers).
    """
    try:
        status = state.sender.status()
        health = {
            **dataclasses.asdict(status.outbox),
            "circuit": status.circuit,
            "circuit_until": status.circuit_until,
            "circuit_since": status.circuit_since,
            "last_error": status.last_error,
            "round_errors": status.round_errors,
            "running": status.running,
            "store_error": None,
        }
    except Exception as exc:  # noqa: BLE001 - a health check reports, it does not raise
        health = _unhealthy(state, exc)
    degraded = degraded_health(state, health)
    if health["store_error"] is not None:
        degraded["ok"] = False
    return {**health, **degraded}


def degraded_health(state: SignupState, health: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The store-trouble part of :func:`health_of`: spool, replaced file, ``ok``."""
    from . import database as database_module

    spool = state.spool
    lost = state.unrecorded.read() if state.unrecorded is not None else None
    try:
        spooled, oldest = spool.stats() if spool is not None else (0, None)
    except OSError as exc:  # an unreadable spool directory: say so, never raise
        logger.error("cannot read the spool directory: %s", exc)
        spooled, oldest = -1, None
    path = os.path.abspath(state.database.path)
    replaced = [r for r in database_module.replacements if r.path == path]
    last = replaced[-1] if replaced else None
    return {
        "spooled": spooled,
        "oldest_spooled_age": None if oldest is None else max(0.0, time.time() - oldest),
        "store_degraded_since": spool.degraded_since if spool is not None else None,
        "database_replaced": None
        if last is None
        else {"how": last.how, "at": last.at, "salvaged": last.salvaged, "count": len(replaced)},
        "not_recorded": 0 if lost is None else lost.count,
        "not_recorded_since": None if lost is None else lost.first_at,
        "database_unrecovered": _unrecovered(state),
        "ok": spooled == 0
        and (lost is None or lost.count == 0)
        and not health.get("round_errors")
        and health.get("circuit") != "open"
        and (bool(health.get("running")) or not state.settings.enabled),
    }


def _unrecovered(state: SignupState) -> dict[str, t.Any] | None:
    """What a damaged SQLite file lost for good (see :mod:`.salvage`), or None."""
    from .database import Database
    from .salvage import describe_unrecovered
    from .salvage import unrecovered

    database = getattr(state.outbox, "database", None)
    if not isinstance(database, Database):  # the outbox is not in the SQLite file
        return None
    try:
        with database.reading() as conn:
            record = unrecovered(conn)
    except Exception:  # noqa: BLE001 - the store error is reported by the caller
        return None
    return None if record is None else {**record, "summary": describe_unrecovered(record)}


def _unhealthy(state: SignupState, exc: Exception) -> dict[str, t.Any]:
    from .delivery import OutboxStats

    return {
        **{field.name: None for field in dataclasses.fields(OutboxStats)},
        "circuit": "-",
        "circuit_until": None,
        "last_error": printable(str(exc), limit=500),
        "running": bool(state.sender.running),
        "store_error": f"{type(exc).__name__}: {printable(str(exc), limit=500)}",
    }
