"""HTTP plumbing shared by the Keen and Auth0 clients (``keen``, ``keen_admin``, ``auth0``).

The clients differ in what they ask and how they read the answers; they share how they
behave on the wire, and that lives here, once:

* :data:`USER_AGENT`, so Keen's and the tenant's logs show who is calling;
* :class:`SessionClient`, the pooled session a client owns (or was given) and closes,
  and :func:`new_session` and :func:`check_timeout` to set it up;
* :func:`send`, which makes one request and returns the response *or* a
  :class:`NoResponse`, never raising. The caller raises its own exception afterwards,
  outside any ``except`` block, so nothing is chained to a ``requests`` exception, whose
  ``.request`` holds the ``Authorization`` header (and, for a token request, the client
  secret in its body);
* :func:`describe_network_error`, a secret-free description of why no answer came;
* :func:`server_wait` and :func:`parse_retry_after`, the wait a server asked for, capped
  at :data:`MAX_RETRY_AFTER`;
* :func:`excerpt`, which turns remote error text into one short, safe line with every
  secret masked (:func:`._text.mask_secrets`): the caller's, and every one the process
  registered, since a server may echo *any* key the app holds (a 401 to the master key
  quoting the write key);
* :func:`header_value_problem`, why a key cannot travel in a header (checked at
  ``init_app``, so that no ``http.client`` error ever quotes it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import html
import math
import re
import typing as t
from importlib import metadata

import requests
from requests.adapters import HTTPAdapter

from ._text import MASK as MASK  # re-exported: what a secret is replaced with
from ._text import mask_secrets
from ._text import printable
from ._text import spaced

if t.TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable
    from collections.abc import Mapping


#: The installed version of the package (``0+unknown`` from a bare checkout).
try:
    VERSION = metadata.version("flask-keen-signup")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    VERSION = "0+unknown"
#: The default ``User-Agent`` of every request to Keen and Auth0.
USER_AGENT = f"flask-keen-signup/{VERSION} python-requests/{requests.__version__}"

#: The longest wait a server may ask for, in seconds, through ``Retry-After`` or
#: ``X-RateLimit-Reset``. A server (or a proxy in front of it) asking for hours would
#: otherwise park the sender or a CLI command; past the cap the callers' own backoff
#: still spaces the attempts.
MAX_RETRY_AFTER = 600.0
#: Default length of an :func:`excerpt`, in characters.
EXCERPT_CHARS = 300

_TAG_RE = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.IGNORECASE | re.DOTALL)
_SPACE_RE = re.compile(r"\s+")


# --------------------------------------------------------------------------- sessions


def new_session(pool_maxsize: int = 10) -> requests.Session:
    """A session whose adapters never retry: each client owns its retries (backoff,
    ``Retry-After``), and urllib3 retrying underneath would multiply them."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_maxsize, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def check_timeout(timeout: tuple[float, float]) -> tuple[float, float]:
    """``(connect, read)`` as floats; both must be positive and finite, so that no call
    can wait forever on a silent server.

    :raises ValueError: otherwise.
    """
    connect, read = timeout
    if not (connect > 0 and read > 0 and math.isfinite(connect) and math.isfinite(read)):
        raise ValueError("timeout must be a (connect, read) pair of positive seconds")
    return float(connect), float(read)


_Client = t.TypeVar("_Client", bound="SessionClient")


class SessionClient:
    """What the clients share about their ``requests.Session``: a context manager that
    closes the session on exit, and only a session it created (one passed in by the
    caller is the caller's to close)."""

    _session: requests.Session
    _owns_session: bool

    def close(self) -> None:
        """Close the pooled connections (only if the client created the session)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self: _Client) -> _Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------- sending


@dataclasses.dataclass(frozen=True)
class NoResponse:
    """Why a request got no response. Holds text only, never the ``requests`` exception.

    :param reason: from :func:`describe_network_error`, safe to show.
    :param transient: the network failed or timed out (worth retrying), as opposed to a
        request that could not be sent at all (an invalid URL, a missing schema).
    """

    reason: str
    transient: bool


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    timeout: tuple[float, float],
    **kwargs: t.Any,
) -> requests.Response | NoResponse:
    """``session.request(...)``, returning a :class:`NoResponse` instead of raising.

    The ``requests`` exception is dropped when this returns: raise from the caller,
    where no ``except`` block is active, and no exception of ours chains it.
    """
    try:
        return session.request(method, url, timeout=timeout, **kwargs)
    except (requests.ConnectionError, requests.Timeout) as exc:
        return NoResponse(describe_network_error(exc, timeout), transient=True)
    except requests.RequestException as exc:
        return NoResponse(describe_network_error(exc, timeout), transient=False)
    except ValueError as exc:
        # http.client refuses a header value with a line break (``Invalid header value
        # b'<the key>'``) and urllib3 one it cannot encode: their text quotes the value.
        return NoResponse(
            f"the request could not be sent ({type(exc).__name__}: an invalid header or URL)",
            transient=False,
        )


def describe_network_error(exc: requests.RequestException, timeout: tuple[float, float]) -> str:
    """Name what went wrong without quoting ``requests``' text (ours is safe by construction).

    ``str(exc)`` is long and may quote the URL; the exception carries the prepared
    request, headers included. The OS-level cause is looked for through urllib3's
    wrapping instead.
    """
    if isinstance(exc, requests.ConnectTimeout):
        return f"connect timed out after {timeout[0]:g}s"
    if isinstance(exc, requests.ReadTimeout):
        return f"read timed out after {timeout[1]:g}s"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake or certificate error"
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.Timeout)):
        return "connection broken while reading the response"
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        cause = pending.pop()
        if cause is None or id(cause) in seen:
            continue
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset by peer"
        if type(cause).__name__ == "RemoteDisconnected":
            return "connection closed without a response"
        if type(cause).__name__ == "NameResolutionError":
            return "host name could not be resolved"
        pending.extend(a for a in cause.args if isinstance(a, BaseException))
        pending.extend((cause.__cause__, cause.__context__, getattr(cause, "reason", None)))
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return f"request failed ({type(exc).__name__})"


# --------------------------------------------------------------------------- waits


def parse_retry_after(
    value: str | None, *, now: dt.datetime | float | None = None
) -> float | None:
    """Read a ``Retry-After`` header: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).

    :param now: the current time (a datetime or epoch seconds) for an HTTP-date.
    :returns: seconds to wait, clamped to ``[0, MAX_RETRY_AFTER]``, or ``None`` when the
        header is absent or unreadable (the caller then uses its own backoff).
    """
    text = (value or "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" or an obsolete zone: HTTP-dates are GMT
            when = when.replace(tzinfo=dt.timezone.utc)
        seconds = when.timestamp() - _epoch(now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def server_wait(
    headers: Mapping[str, str], *, now: dt.datetime | float | None = None
) -> float | None:
    """The wait a server asked for: ``Retry-After``, else ``X-RateLimit-Reset``.

    ``X-RateLimit-Reset`` (Auth0's, epoch seconds) says when the rate-limit bucket is
    full again; a time already past gives no hint (``None``: use backoff), because it
    does not say when one more request is allowed. Capped at :data:`MAX_RETRY_AFTER`.
    """
    retry_after = parse_retry_after(headers.get("Retry-After"), now=now)
    if retry_after is not None:
        return retry_after
    reset = headers.get("X-RateLimit-Reset")
    if reset is None:
        return None
    try:
        wait = float(reset) - _epoch(now)
    except ValueError:
        return None
    if math.isfinite(wait) and wait > 0:
        return min(wait, MAX_RETRY_AFTER)
    return None


def _epoch(now: dt.datetime | float | None) -> float:
    if now is None:
        return dt.datetime.now(dt.timezone.utc).timestamp()
    if isinstance(now, dt.datetime):
        return now.timestamp()
    return float(now)


# --------------------------------------------------------------------------- remote text


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as an HTTP header value (``Authorization``), or ``None``.

    ``http.client`` refuses a line break and cannot encode a character beyond Latin-1; it
    would send any other control character as is. A key holding any of them is a paste
    error (Keen's keys are hex, Auth0's secrets base64url), so all are refused, and the
    answer names the character's kind and position, never the value.
    """
    for position, char in enumerate(value, 1):
        code = ord(char)
        where = f"(character {position} of {len(value)})"
        if char in "\r\n":
            return f"contains a line break {where}"
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return f"contains the control character U+{code:04X} {where}"
        if code > 0xFF:
            return f"contains a character outside Latin-1, which a header cannot carry {where}"
    return None


def excerpt(text: str, limit: int = EXCERPT_CHARS, *, secrets: Iterable[str | None] = ()) -> str:
    """A short, single-line, tag-free excerpt of remote text, with ``secrets`` masked.

    Tags (an HTML error page) are dropped and entities decoded, control characters and
    runs of white space become one space, the result is cut to ``limit`` characters
    (``…`` marks the cut) and invisible or bidi characters are shown escaped. Secrets are
    masked before the cut (so no half of one survives it) and again after decoding.
    """
    secrets = tuple(secrets)
    text = html.unescape(_TAG_RE.sub(" ", mask_secrets(text, secrets)))
    text = mask_secrets(_SPACE_RE.sub(" ", spaced(text)).strip(), secrets)
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return printable(text, limit=None)
