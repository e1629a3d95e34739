"""``KeenSignup``: the Flask wiring. Config at ``init_app``, the callback hook, signals.

The decisions live in :mod:`.tracker`; the sending in :mod:`.delivery` and :mod:`.keen`.
This module only connects them to Flask: per-app state in
``app.extensions["keen_signup"]`` (never ``self.app``), the ``@track`` decorator, the
explicit ``track_token`` / ``track_claims``, and the rule that the login is never
broken by analytics: errors are logged, not raised, unless
``KEEN_SIGNUP_PROPAGATE_ERRORS`` (default: when testing or debugging) says otherwise.
"""

from __future__ import annotations

import functools
import inspect
import logging
import typing as t
import weakref
from collections.abc import Mapping

from flask import has_request_context
from flask import request

from . import attribution
from . import metrics
from ._authlib_hook import _authlib_tokens
from ._authlib_hook import _authlib_tokens_changed
from ._authlib_hook import _status_of
from ._text import printable
from .assembly import build_state
from .assembly import start
from .attribution import AttributionCapture
from .attribution import load_attribution_settings
from .config import load_settings
from .exceptions import InvalidClaimsError
from .health import health_of
from .health import load_health_thresholds
from .state import app_for
from .state import signup_state
from .tracker import TrackOutcome

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask


logger = logging.getLogger(__name__)

F = t.TypeVar("F", bound=t.Callable[..., t.Any])
R = t.TypeVar("R")
EventPropertiesCallback = t.Callable[[t.Mapping[str, t.Any], t.Any], t.Mapping[str, t.Any]]


class KeenSignup:
    """Report each user's signup to Keen IO, once.

    ::

        signup = KeenSignup(app)          # or KeenSignup() then signup.init_app(app)

        @app.route("/callback")
        @signup.track
        def callback():
            token = oauth.auth0.authorize_access_token()
            ...

    Config keys are documented in ``docs/configuration.md``; they are read once, here.
    A method that takes ``app=`` needs it only for an instance on several apps, called
    outside an app context; otherwise it is the current app, or the only one.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._event_properties: EventPropertiesCallback | None = None
        # The views given to @track, to catch the decorator written above @app.route.
        self._tracked_views: list[t.Callable[..., t.Any]] = []
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate the config and start the sender. A bad config raises here, not later.

        :raises ConfigurationError: naming the key at fault.
        """
        if "keen_signup" in app.extensions:
            raise RuntimeError(
                "A KeenSignup instance is already registered on this app; "
                "call init_app once per app."
            )
        settings = load_settings(app)
        attribution_settings = load_attribution_settings(app, settings.addons)
        thresholds = load_health_thresholds(app)
        metrics_on = metrics.enabled(app)  # validated now, before anything starts
        state = build_state(app, settings, thresholds)  # refuses a start bound to fail
        if settings.enabled and attribution_settings.enabled:
            state.attribution = AttributionCapture(app, attribution_settings)
            app.before_request(state.attribution.hook())
        app.extensions["keen_signup"] = state
        from .cli import cli

        app.cli.add_command(cli)
        self._apps.add(app)
        self._check_view_order(app)
        # Once more at the first request: blueprints may be registered after init_app
        # and views decorated before it.
        checked: list[bool] = []

        @app.before_request
        def check_once() -> None:
            if not checked:
                checked.append(True)
                self._check_view_order(app)

        if settings.enabled:
            start(app, state, count=metrics_on)

    # -- public API ----------------------------------------------------------------------

    def track(self, view: F) -> F:
        """Decorate the login callback view: track the token Authlib returned in it.

        After the view returns a response with status < 400, every token that an Authlib
        client's ``authorize_access_token()`` produced during the view is tracked from its
        validated ``userinfo``. The response is returned untouched; an exception from the
        view propagates untouched.
        """

        @functools.wraps(view)
        def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
            before = _authlib_tokens()
            _quietly(attribution.observe_intent, "cannot observe the signup intent")
            rv = view(*args, **kwargs)
            self._after_view(rv, before)
            return rv

        @functools.wraps(view)
        async def async_wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
            before = _authlib_tokens()
            _quietly(attribution.observe_intent, "cannot observe the signup intent")
            rv = await view(*args, **kwargs)
            self._after_view(rv, before)
            return rv

        tracked: t.Any = async_wrapper if inspect.iscoroutinefunction(view) else wrapper
        # The attribution hook never takes this view's request as a first touch.
        tracked._keen_signup_tracked = True
        self._tracked_views.append(view)
        for app in list(self._apps):
            self._check_view_order(app)
        return t.cast(F, tracked)

    def track_token(self, token: t.Mapping[str, t.Any]) -> TrackOutcome | None:
        """Track the token ``authorize_access_token()`` returned. Uses ``token["userinfo"]``.

        Returns what happened, or ``None`` if an error was logged instead of raised.
        """
        userinfo = token.get("userinfo") if isinstance(token, Mapping) else None
        if not isinstance(userinfo, Mapping):
            _handle_error(
                InvalidClaimsError(
                    "the token has no 'userinfo' (validated ID-token claims): request the "
                    "'openid' scope, e.g. client_kwargs={'scope': 'openid profile email'}"
                )
            )
            return None
        return self.track_claims(userinfo)

    def track_claims(
        self, claims: t.Mapping[str, t.Any], *, connection: t.Any = None
    ) -> TrackOutcome | None:
        """Track already validated ID-token claims (e.g. Authlib's ``UserInfo``).

        :param connection: with ``KEEN_SIGNUP_STORE = "postgres"``, the app's own
            database connection (psycopg 3, or SQLAlchemy's ``db.session.connection()``):
            the signup is recorded in the app's open transaction and commits or rolls
            back with it (see ``docs/postgres.md``).

        Returns what happened, or ``None`` if an error was logged instead of raised.
        """
        state = signup_state()
        try:
            # ``attribution`` and ``signup_intent`` of the current browser's signup.
            capture = state.attribution
            touch = None
            if capture is not None:
                touch = _quietly(
                    capture.event_properties, "signup attribution ignored", logging.WARNING
                )
            extra: t.Any = touch or None  # a mapping, or a callable run for a new user only
            if self._event_properties is not None:
                extra = _with_event_properties(self._event_properties, claims, touch)
            if connection is not None:  # postgres: inside the app's own transaction
                outcome = state.tracker.track_in_transaction(
                    claims, connection, facts=_request_facts, extra=extra
                )
            else:
                outcome = state.tracker.track_claims(claims, facts=_request_facts, extra=extra)
        except Exception as exc:  # noqa: BLE001 - the login must not break
            _handle_error(exc, claims)
            return None
        if touch is not None and outcome is not TrackOutcome.FAILED:
            # Decided (recorded, returning or marked): the first touch has served. A sync
            # failure keeps it for the retry at the next login.
            _quietly(attribution.clear, "cannot clear the signup attribution")
        return outcome

    def register_metrics(self, registry: t.Any = None, app: Flask | None = None) -> None:
        """Expose the Prometheus metrics (``docs/metrics.md``) through ``registry``.

        Adds a collector that reads the outbox at scrape time (pending, in flight, dead,
        oldest pending age, circuit) to ``registry`` (default: ``prometheus_client``'s
        ``REGISTRY``), and makes sure this app's signups are counted. Safe to call again,
        e.g. with a fresh registry per scrape in multiprocess mode.

        :raises ConfigurationError: ``prometheus_client`` is not installed, or
            ``KEEN_SIGNUP_METRICS`` is ``False``.
        """
        app = app_for(app, self._apps, "signup.register_metrics(registry, app=app)")
        metrics.register(app, signup_state(app), registry)

    def event_properties(self, callback: EventPropertiesCallback) -> EventPropertiesCallback:
        """Register ``callback(claims, request) -> dict`` adding properties to each event.

        Its result is sanitised to Keen's rules; it cannot override the built-in fields.
        """
        self._event_properties = callback
        return callback

    def flush(self, timeout: float = 30.0, app: Flask | None = None) -> int:
        """Send everything queued now (and decide what the spool holds), waiting up to
        ``timeout`` seconds. Returns how many signups are still queued (0: all sent).

        For tests, scripts and a graceful deploy; the background sender does the same by
        itself. ``flask keen-signup flush`` is the command-line form. Paced like the
        sender: nothing is sent while its circuit is open (Keen kept failing), so asking
        often never spends retries faster. ``timeout`` ``inf`` (or beyond what a thread can
        wait): no deadline; NaN or negative: 0.
        """
        app = app_for(app, self._apps, "signup.flush(app=app)")
        return signup_state(app).sender.flush(timeout=timeout)

    def health(self, app: Flask | None = None) -> dict[str, t.Any]:
        """The delivery state, for an app's ``/healthz`` and ``flask keen-signup status``.

        Keys: ``pending``, ``due``, ``in_flight``, ``delivered``, ``skipped``, ``dead``,
        ``oldest_pending_age`` (seconds or ``None``), ``last_error``, ``resends``,
        ``circuit`` (``closed``/``open``/``half-open``), ``circuit_until``, ``running``;
        ``spooled`` (signups in the local spool, waiting for the store to answer) and
        ``oldest_spooled_age`` (seconds),
        ``store_degraded_since`` (when this process began spooling, or ``None``),
        ``database_replaced`` (the SQLite file was deleted or replaced under the app:
        what was done, or ``None``), ``ok`` (false while anything is stuck) and
        ``store_error``: ``None``, or why the outbox cannot be read (the counts are then
        ``None``). Never raises for a broken store. And ``verdict`` (``ok``,
        ``degraded``, ``failing``) with ``reasons``: see :mod:`.health` and
        ``docs/metrics.md`` for the thresholds and a ``/healthz`` recipe.
        """
        return health_of(signup_state(app_for(app, self._apps, "signup.health(app=app)")))

    # -- internals -----------------------------------------------------------------------

    def _check_view_order(self, app: Flask) -> None:
        """Catch ``@signup.track`` written above ``@app.route``.

        Decorators apply bottom-up: written above the route, ``track`` wraps the view only
        after Flask registered the bare function, and every signup would be lost without a
        word. The registered view is then one of the functions given to ``track``.
        Raises in debug and testing; logs an error otherwise.
        """
        tracked = self._tracked_views
        for endpoint, view in list(app.view_functions.items()):
            if any(view is original for original in tracked):
                message = (
                    f"@signup.track is written above @app.route for the view {endpoint!r}: "
                    "Flask registered the undecorated function, so no signup is tracked. "
                    "Put @signup.track below the route decorator, next to the function."
                )
                if app.debug or app.testing:
                    raise RuntimeError(message)
                logger.error(message)

    def _after_view(self, rv: t.Any, before: dict[str, int]) -> None:
        try:
            if _status_of(rv) >= 400:
                return
            for name, token in _authlib_tokens_changed(before):
                logger.debug("tracking the token of Authlib client %r", name)
                self.track_token(token)
        except Exception as exc:  # noqa: BLE001 - the login must not break
            _handle_error(exc)


def _handle_error(exc: Exception, claims: t.Mapping[str, t.Any] | None = None) -> None:
    if _propagate():
        raise exc
    if isinstance(exc, InvalidClaimsError):
        logger.error("signup not tracked: %s", exc)
        return
    # Not recorded (the store or the outbox failed): say who, so that nothing is lost
    # silently — the log line and signup_failed carry the user id for a later backfill.
    sub = claims.get("sub") if isinstance(claims, Mapping) else None
    user_id = sub if isinstance(sub, str) else None
    logger.error(
        "signup of %s not recorded; the login is not affected: %s",
        printable(user_id, limit=120) if user_id is not None else "an unknown user",
        printable(str(exc), limit=500),
        exc_info=True,
    )
    state = signup_state()
    state.unrecorded.add()  # counted until someone looks (issue 16)
    state.tracker.notify("not_recorded", {"user_id": user_id})
    if user_id is not None:
        failure = {"user_id": user_id, "event": None, "error": exc, "attempts": 0}
        state.tracker.notify("failed", failure)


def _with_event_properties(
    callback: EventPropertiesCallback,
    claims: t.Mapping[str, t.Any],
    touch: dict[str, t.Any] | None,
) -> t.Callable[[], t.Mapping[str, t.Any] | None]:
    """The ``@event_properties`` callback's result, beside the attribution ``touch``."""

    def extra() -> t.Mapping[str, t.Any] | None:
        try:
            props: object = callback(claims, request if has_request_context() else None)
        except Exception as exc:  # noqa: BLE001 - a bad callback must not lose the signup
            if _propagate():
                raise
            logger.error(
                "the @event_properties callback failed; recording the signup without "
                "its properties: %s",
                type(exc).__name__,
                exc_info=True,
            )
            props = None
        if props is not None and not isinstance(props, Mapping):
            logger.error("the @event_properties callback returned a non-mapping; ignored")
            props = None
        if not touch:
            return props
        if props and any(name in props for name in touch):
            logger.debug("@event_properties keys replaced by the signup's attribution")
        return {**(props or {}), **touch}

    return extra


def _propagate() -> bool:
    app = app_for()
    setting = signup_state(app).settings.propagate_errors
    return bool(app.testing or app.debug) if setting is None else setting


def _quietly(call: t.Callable[[], R], failure: str, level: int = logging.DEBUG) -> R | None:
    """``call()``, or ``None`` with ``failure`` logged: analytics never break the login
    (a bad session value, a read-only session interface)."""
    try:
        return call()
    except Exception:  # noqa: BLE001 - analytics must never break the login
        logger.log(level, failure, exc_info=True)
        return None


def _request_facts() -> tuple[str | None, str | None]:
    """The client IP (``remote_addr``: correct behind ``ProxyFix``) and the User-Agent."""
    if not has_request_context():
        return None, None
    current = request._get_current_object()  # type: ignore[attr-defined]
    return current.remote_addr, current.environ.get("HTTP_USER_AGENT")
