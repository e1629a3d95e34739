"""Signup attribution: where the browser that signed up came from (first touch).

A ``before_request`` hook looks at every request for UTM parameters (``utm_source`` ->
``source``, ...) and an external ``Referer``; the *first* request of a browser that carries
either is kept in that browser's Flask session, with its path (the landing page), until the
browser's signup event carries it as ``attribution`` (DESIGN §3, docs/attribution.md).

The hook returns after two ``environ`` lookups and a substring test on ordinary requests
(``bench/attribution_metrics.py``). A ``Referer`` from the app's own host or from the
identity provider (the hosts of the app's Authlib clients, plus
``KEEN_SIGNUP_ATTRIBUTION_IGNORE_HOSTS``) is not external, and a request to a
``@signup.track`` view is never a touch. Values are cleaned of control characters and capped
so the session cookie stays small, and sanitised again when the event is built; the landing
page's query string is not kept (it may carry tokens), its UTM parameters are.

The signup intent: with ``authorize_redirect(..., screen_hint="signup")``, Authlib keeps the
authorize URL in the session under its state key until the callback; ``@signup.track`` reads
it there before the view runs, and the event says ``signup_intent: true`` (``false`` without
the hint; absent when it cannot be seen).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import time
import typing as t
from urllib.parse import parse_qs
from urllib.parse import urlsplit

from flask import request
from flask import session

from ._text import keen_text
from ._text import spaced
from ._text import valid_unicode

try:  # The request context's ContextVar: ~15x cheaper than the ``request`` proxy, and the
    # hook runs on every request. Private to Flask; without it the proxy is used.
    from flask.globals import _cv_request as _request_var
except ImportError:  # pragma: no cover - a Flask that renamed it
    _request_var = None  # type: ignore[assignment]

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

logger = logging.getLogger(__name__)

#: Where the first touch waits in the browser's Flask session until its signup.
SESSION_KEY = "_keen_signup_attribution"
#: Request environ key where ``@signup.track`` leaves the signup intent it observed.
INTENT_KEY = "flask_keen_signup.signup_intent"
#: Every field an ``attribution`` object may have, in order.
FIELDS = ("source", "medium", "campaign", "term", "content", "referrer", "landing")
#: UTM query parameter -> attribution field (``utm_source`` -> ``source``, ...).
UTM_FIELDS = tuple((f"utm_{field}", field) for field in FIELDS[:5])
#: Longest UTM value kept (real campaign tags are a few dozen characters).
MAX_VALUE_LENGTH = 128
#: Longest ``referrer`` kept.
MAX_URL_LENGTH = 512
#: Longest ``landing`` path kept.
MAX_PATH_LENGTH = 256
#: A first touch older than this when the signup comes is dropped (an attribution window,
#: the usual 30 days of analytics tools); ``KEEN_SIGNUP_ATTRIBUTION_MAX_AGE`` changes it.
DEFAULT_MAX_AGE = 30 * 24 * 3600.0
_LIMITS = {"referrer": MAX_URL_LENGTH, "landing": MAX_PATH_LENGTH}


@dataclasses.dataclass(frozen=True)
class AttributionSettings:
    """``KEEN_SIGNUP_ATTRIBUTION*`` keys, read once at ``init_app``."""

    enabled: bool = True
    #: Hosts never counted as external referrers besides the app's own and the IdP's;
    #: ``.example.com`` also matches every subdomain.
    ignore_hosts: tuple[str, ...] = ()
    max_age: float = DEFAULT_MAX_AGE
    #: Whether the event's attribution gets ``landing_url`` (the URL add-ons need it).
    landing_url: bool = False


def load_attribution_settings(app: Flask, addons: t.Sequence[str] = ()) -> AttributionSettings:
    """Read and validate the attribution keys of ``app.config``.

    :raises ConfigurationError: naming the bad key.
    """
    from ._config_values import _as_bool
    from ._config_values import _as_list
    from ._config_values import _as_number
    from .config import MAX_RETENTION

    c = app.config
    enabled = _as_bool("KEEN_SIGNUP_ATTRIBUTION", c.get("KEEN_SIGNUP_ATTRIBUTION", True))
    hosts = _as_list(
        "KEEN_SIGNUP_ATTRIBUTION_IGNORE_HOSTS", c.get("KEEN_SIGNUP_ATTRIBUTION_IGNORE_HOSTS", [])
    )
    max_age = c.get("KEEN_SIGNUP_ATTRIBUTION_MAX_AGE", DEFAULT_MAX_AGE)
    if isinstance(max_age, dt.timedelta):
        max_age = max_age.total_seconds()
    seconds = _as_number(
        "KEEN_SIGNUP_ATTRIBUTION_MAX_AGE", max_age, minimum=1, maximum=MAX_RETENTION
    )
    return AttributionSettings(
        enabled=enabled,
        ignore_hosts=tuple(h.strip().lower() for h in hosts if h.strip()),
        max_age=seconds,
        landing_url=any(a in ("referrer_parser", "url_parser") for a in addons),
    )


# -- pure parsing ---------------------------------------------------------------------------


def clean(value: object, limit: int) -> str | None:
    """``value`` without control characters or lone surrogates, stripped and cut to
    ``limit``; ``None`` if nothing usable is left. Controls become a space, bidi
    overrides and isolates U+FFFD (:mod:`._text`); lone surrogates, which the session
    cookie could not encode, U+FFFD too."""
    if not isinstance(value, str):
        return None
    text = keen_text(spaced(value)).strip()[:limit].strip()
    return valid_unicode(text)[0] or None


def host_of(url: str) -> str | None:
    """The lower-case host name of an absolute http(s) URL, or ``None``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host:
        return None
    return host.lower()


def host_matches(host: str, patterns: t.Iterable[str]) -> bool:
    """Whether ``host`` is one of ``patterns`` (``.example.com`` matches its subdomains)."""
    return any(
        host == p or (p.startswith(".") and (host == p[1:] or host.endswith(p))) for p in patterns
    )


def parse_touch(
    query_string: str,
    referer: str | None,
    path: str,
    own_host: str,
    ignored_hosts: t.Iterable[str] = (),
) -> dict[str, str] | None:
    """The attribution one request carries, or ``None`` when it carries none: from the raw
    ``QUERY_STRING``, the ``Referer`` and the path (the landing page); ``own_host`` (as
    the browser addressed it, no port) and ``ignored_hosts`` are not external referrers."""
    touch: dict[str, str] = {}
    if "utm_" in query_string:
        try:
            params = parse_qs(query_string, keep_blank_values=False, max_num_fields=100)
        except ValueError:  # too many fields: not a campaign link
            params = {}
        for param, field in UTM_FIELDS:
            values = params.get(param)
            value = clean(values[0], MAX_VALUE_LENGTH) if values else None
            if value is not None:
                touch[field] = value
    host = host_of(referer.strip()) if referer else None
    if host and host != own_host.lower() and not host_matches(host, ignored_hosts):
        url = clean(referer, MAX_URL_LENGTH)
        if url is not None:
            touch["referrer"] = url
    if not touch:
        return None
    touch["landing"] = clean(path, MAX_PATH_LENGTH) or "/"
    return touch


def event_attribution(
    stored: object,
    *,
    now: float,
    max_age: float,
    url_root: str | None = None,
) -> dict[str, t.Any] | None:
    """The ``attribution`` property for a signup from what the session holds, or ``None``.

    The session is signed, but what it holds came from a URL: only the known fields with
    string values are kept and cleaned again (:func:`clean`); the event builder sanitises
    them once more with the rest of the event. ``url_root`` (``request.url_root``) adds
    ``landing_url`` for Keen's URL add-ons.
    """
    if not isinstance(stored, dict):
        return None
    at = stored.get("at")
    if isinstance(at, (int, float)) and not isinstance(at, bool) and now - at > max_age:
        logger.debug("signup attribution older than KEEN_SIGNUP_ATTRIBUTION_MAX_AGE: dropped")
        return None
    out: dict[str, t.Any] = {}
    for field in FIELDS:
        value = clean(stored.get(field), _LIMITS.get(field, MAX_VALUE_LENGTH))
        if value is not None:
            out[field] = value
    if not out:
        return None
    if url_root and "landing" in out:
        landing = out["landing"]
        out["landing_url"] = url_root.rstrip("/") + (landing if landing.startswith("/") else "/")
    return out


def intent_of_authorize_url(url: object) -> bool | None:
    """``True`` if the authorize URL asked for Auth0's sign-up screen, ``False`` if not,
    ``None`` if ``url`` is not a URL."""
    if not isinstance(url, str) or "://" not in url:
        return None
    if "screen_hint=signup" not in url:
        return False  # the usual login: no parse on the callback's path
    try:
        query = urlsplit(url).query
    except ValueError:
        return None
    return "signup" in parse_qs(query).get("screen_hint", ())


# -- the Flask side ------------------------------------------------------------------------


class AttributionCapture:
    """The ``before_request`` hook of one app, and the session side of its signups."""

    def __init__(self, app: Flask, settings: AttributionSettings) -> None:
        self.app = app
        self.settings = settings

    @functools.cached_property
    def ignored_hosts(self) -> tuple[str, ...]:
        """The configured hosts plus the identity providers' (learnt once, at the first
        request that needs them: Authlib clients are usually registered after
        ``init_app``)."""
        return self.settings.ignore_hosts + identity_provider_hosts(self.app)

    def hook(self) -> t.Callable[[], None]:
        """The ``before_request`` hook that keeps the first touch of this browser (never
        raises into the request). A plain function: Flask's per-hook dispatch
        (``ensure_sync``) costs about a third for a function of what it costs for a bound
        method, and it runs on every request."""
        capture = self.capture

        def keen_signup_attribution() -> None:
            environ = request_context().request.environ
            if is_candidate(environ):
                capture(environ)

        return keen_signup_attribution

    def capture(self, environ: dict[str, t.Any]) -> None:
        """The slow path, for requests with ``utm_`` or a Referer from another host."""
        try:
            if SESSION_KEY in session:
                return  # first touch wins
            view = self.app.view_functions.get(request.endpoint) if request.endpoint else None
            if getattr(view, "_keen_signup_tracked", False):
                return  # the login callback: its Referer is the identity provider
            own_host = host_of(f"http://{request.host}/") or ""
            query = environ.get("QUERY_STRING", "")
            referer = environ.get("HTTP_REFERER")
            touch = parse_touch(query, referer, request.path, own_host, self.ignored_hosts)
            if touch is not None:
                session[SESSION_KEY] = {**touch, "at": int(time.time())}
        except Exception:  # noqa: BLE001 - analytics must never break a page
            logger.warning("signup attribution not captured", exc_info=True)

    def event_properties(self) -> dict[str, t.Any] | None:
        """``attribution`` and ``signup_intent`` for the current request's signup, or
        ``None``. Runs in every tracked callback (returning users too), so it reads the
        request context directly: two dict lookups when there is nothing."""
        ctx = request_context()
        if ctx is None:
            return None
        intent = ctx.request.environ.get(INTENT_KEY)
        sess = ctx.session
        stored = sess.get(SESSION_KEY) if sess is not None else None
        props: dict[str, t.Any] = {}
        if intent is not None:
            props["signup_intent"] = intent
        if stored is not None:
            touch = event_attribution(
                stored,
                now=time.time(),
                max_age=self.settings.max_age,
                url_root=ctx.request.url_root if self.settings.landing_url else None,
            )
            if touch:
                props["attribution"] = touch
        return props or None


def clear() -> None:
    """Forget the current browser's first touch (its signup has been decided)."""
    if SESSION_KEY in session:
        session.pop(SESSION_KEY, None)


def observe_intent() -> None:
    """Note the signup intent of the login this callback request completes (module doc).

    Called by ``@signup.track`` before the view, which consumes Authlib's state data. Leaves
    ``True``/``False`` in the request's environ under :data:`INTENT_KEY` (``None``
    when the authorize URL is unreadable), or nothing.
    """
    ctx = request_context()
    if ctx is None:
        return
    state_of_app = ctx.app.extensions.get("keen_signup")
    if getattr(state_of_app, "attribution", None) is None:
        return  # attribution off
    sess = ctx.session
    if not sess:
        return
    keys = [key for key in sess if key.startswith("_state_")]
    if not keys:
        return  # no login under way in this session (Authlib keeps one key per login)
    req = ctx.request
    state = req.args.get("state")  # parsed once per request: Authlib's own read reuses it
    if not state and req.method == "POST":
        state = req.form.get("state")  # response_mode=form_post
    if not state:
        return
    suffix = f"_{state}"
    for key in keys:
        if key.endswith(suffix):
            value = sess.get(key)
            data = value.get("data") if isinstance(value, dict) else None
            if isinstance(data, dict):
                req.environ[INTENT_KEY] = intent_of_authorize_url(data.get("url"))
            return


def request_context() -> t.Any:
    """The current ``RequestContext``, or ``None`` outside a request (no proxy on the way)."""
    var: t.Any = _request_var
    if var is not None:
        return var.get(None)
    from flask import has_request_context  # pragma: no cover - a Flask without the var
    from flask.globals import request_ctx  # pragma: no cover

    if not has_request_context():  # pragma: no cover
        return None
    return t.cast(t.Any, request_ctx)._get_current_object()  # pragma: no cover


def is_candidate(environ: t.Mapping[str, t.Any]) -> bool:
    """Whether a request may carry a touch: ``utm_`` in its query string, or a Referer that
    does not name the request's own host. The fast test every request goes through."""
    if "utm_" in environ.get("QUERY_STRING", ""):
        return True
    referer = environ.get("HTTP_REFERER")
    if not referer:
        return False
    # The Referer names the request's own host: an ordinary in-app navigation.
    host = environ.get("HTTP_HOST")
    if host:
        start = referer.find("://") + 3
        end = start + len(host)
        if (
            start > 2
            and referer.startswith(host, start)
            and (len(referer) == end or referer[end] in "/?#")
        ):
            return False
    return True


def identity_provider_hosts(app: Flask) -> tuple[str, ...]:
    """The hosts of the app's Authlib clients (their metadata, authorize and token URLs),
    plus ``AUTH0_DOMAIN`` and ``KEEN_SIGNUP_AUTH0_DOMAIN`` when set. (Authlib's registry is
    private: should it change, ``KEEN_SIGNUP_ATTRIBUTION_IGNORE_HOSTS`` still applies.)"""
    urls: list[object] = []
    for key in ("AUTH0_DOMAIN", "KEEN_SIGNUP_AUTH0_DOMAIN"):
        domain = app.config.get(key)
        if isinstance(domain, str):
            text = domain.strip()  # a bare host, or a URL (the emulator's http://...)
            urls.append(text if "://" in text else f"https://{text}")
    oauth = app.extensions.get("authlib.integrations.flask_client")
    try:
        names = ("server_metadata_url", "authorize_url", "access_token_url")
        for _, kwargs in getattr(oauth, "_registry", {}).values():
            urls.extend(kwargs.get(name) for name in names)
        for client in getattr(oauth, "_clients", {}).values():
            urls.extend(getattr(client, name, None) for name in names)
            metadata = getattr(client, "server_metadata", None) or {}
            urls += [metadata.get("authorization_endpoint"), metadata.get("issuer")]
    except Exception:  # noqa: BLE001 - Authlib's internals changed: fall back to config
        logger.debug("cannot read the Authlib client registry", exc_info=True)
    hosts = {host_of(url) for url in urls if isinstance(url, str)}
    return tuple(sorted(host for host in hosts if host))
