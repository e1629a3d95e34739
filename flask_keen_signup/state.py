"""The per-app state of the extension, and how a call finds its app.

Its own module so that the CLI, the metrics collector and the privacy commands can read an
app's state without importing the extension (which imports them: no import cycle).
"""

from __future__ import annotations

import dataclasses
import typing as t

from flask import current_app
from flask import has_app_context

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
    spool: Spool
    #: Signups neither the store nor the spool could take, counted until acknowledged.
    unrecorded: Unrecorded
    #: The first-touch capture (``KEEN_SIGNUP_ATTRIBUTION``), or ``None`` when it is off.
    attribution: AttributionCapture | None = None
    #: ``KEEN_SIGNUP_HEALTH_*``: what :meth:`KeenSignup.health`'s verdict is judged on.
    health_thresholds: HealthThresholds = dataclasses.field(default_factory=HealthThresholds)


def app_for(app: Flask | None = None, apps: t.Collection[Flask] = (), call: str = "") -> Flask:
    """``app`` when given; else the current app (a request, a CLI command, a test's
    ``app_context()``); else, outside any context, the one app of ``apps``.

    :raises RuntimeError: no app to be found; ``call`` is the call that says which.
    """
    if app is not None:
        return app
    if has_app_context():
        return t.cast("Flask", current_app._get_current_object())  # type: ignore[attr-defined]
    if len(apps) == 1:
        return next(iter(apps))
    if not apps:
        raise RuntimeError(
            "no app given and no app context: pass the app, e.g. "
            f"{call}, or call KeenSignup(app) or init_app(app) first"
        )
    names = ", ".join(sorted(repr(each.name) for each in apps))
    raise RuntimeError(
        f"this KeenSignup serves {len(apps)} apps ({names}) and there is no app "
        f"context: say which, e.g. {call}"
    )


def signup_state(app: Flask | None = None) -> SignupState:
    """The extension's state for ``app`` (default: the current app).

    For tests and operations tools: ``signup_state(app).sender.flush(10)``,
    ``signup_state(app).outbox.stats()``. Raises ``RuntimeError`` if ``init_app`` was
    not called on ``app``, or, without ``app``, outside an app context.
    """
    if app is None and has_app_context():  # every login asks: the current app, directly
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    elif app is None:
        app = app_for(call="signup_state(app)")  # raises: it names what to pass
    try:
        return t.cast(SignupState, app.extensions["keen_signup"])
    except KeyError:
        raise RuntimeError(
            "KeenSignup is not initialised on this app: call KeenSignup(app) or init_app(app)"
        ) from None
