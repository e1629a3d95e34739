"""Untrusted text made safe for one line of a terminal or a log.

A user's ``sub`` and ``name``, Keen's and Auth0's error messages and config values all come
from outside. Printed as received, a newline forges a row of ``flask keen-signup dead`` or
a log line, an ANSI escape sequence (``ESC [ 31 m``, or worse, one that rewrites the
title or the clipboard) reaches the operator's terminal, and a right-to-left override
(U+202E) shows the text backwards. :func:`printable` escapes all of them, visibly, and
bounds the length, so what is shown is one honest line.

It also masks every secret the process knows of (:func:`register_secret`: the configured
Keen keys, the Auth0 client secret, database and Redis passwords, Management API tokens):
text from outside (an error page, a driver's message, a URL) may echo one back, and this
module is where such text becomes a line of a log, a CLI answer or an exception message
(directly, or through :func:`._http.excerpt`).

What is *sent to Keen* is not escaped but replaced (:func:`keen_text`, DESIGN §3): the one
place where control and bidi characters are taken out of event text, used by the event
builder's sanitiser, the attribution hook and ``forget``.
"""

from __future__ import annotations

import collections
import re
import threading
import typing as t
import unicodedata

if t.TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable

#: Characters that are escaped: C0 and C1 controls, DEL, the backslash (so that an escape
#: in the output is always ours), and the Unicode line/paragraph separators.
_UNSAFE_RE = re.compile("[\\x00-\\x1f\\x7f-\\x9f\\\\\u2028\u2029]")
#: Invisible formatting (bidi overrides and isolates, zero-width characters), surrogates,
#: unassigned and private-use code points: escaped too (checked per character only when
#: the fast test below finds a non-ASCII character).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})

#: What no string sent to Keen carries (DESIGN §3): C0 controls but tab, DEL, C1 controls,
#: the bidi embeddings and overrides (U+202A-U+202E) and isolates (U+2066-U+2069). People
#: read this data in terminals, where ESC sequences recolour, retitle or write the
#: clipboard (OSC 52), and in spreadsheets, where U+202E shows text backwards. CRLF is one
#: match so that it becomes one space.
KEEN_UNSAFE_RE = re.compile("\r\n|[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
#: These become a space (a name on two lines is still a name); the others U+FFFD.
_LINE_BREAKS = frozenset({"\r\n", "\n", "\r", "\x0b", "\x0c", "\x85"})
#: Runs of C0 and C1 controls (tab included), for :func:`spaced`.
_CONTROLS_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]+")

#: Default maximum length, in characters, of what :func:`printable` returns.
DEFAULT_LIMIT = 200


#: What a secret is replaced with.
MASK = "***"
#: Shorter strings are not masked process-wide: masking ``"secret"`` in every message would
#: garble them, and so short a string is no secret. (A client still masks its own key, of
#: any length, in what its server answers: :func:`mask_secrets`' ``extra``.)
MIN_SECRET_LENGTH = 8
#: Short-lived secrets (access tokens) remembered at once; older ones have expired.
MAX_TRANSIENT_SECRETS = 32

_lock = threading.Lock()
#: Configured secrets, longest first (so a secret that contains another is masked whole).
#: Replaced, never mutated: readers take no lock.
_secrets: tuple[str, ...] = ()
_configured: set[str] = set()
_transient: collections.deque[str] = collections.deque(maxlen=MAX_TRANSIENT_SECRETS)


def register_secret(*values: object, transient: bool = False) -> None:
    """Remember secrets to mask in every message this package makes from outside text.

    Called by ``init_app`` for every configured credential and by the clients for the
    keys and tokens they hold. ``transient`` ones (access tokens) are kept in a bounded
    queue. Values that are not strings or are shorter than :data:`MIN_SECRET_LENGTH`
    are ignored.
    """
    global _secrets
    fresh = [v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH]
    if not fresh:
        return
    with _lock:
        if transient:
            for value in fresh:
                if value not in _transient:
                    _transient.append(value)
        else:
            _configured.update(fresh)
        _secrets = tuple(sorted(_configured.union(_transient), key=len, reverse=True))


def mask_secrets(text: str, extra: Iterable[str | None] = ()) -> str:
    """``text`` with every registered secret, and every non-empty one of ``extra``,
    replaced by :data:`MASK`."""
    for secret in (*sorted((s for s in extra if s), key=len, reverse=True), *_secrets):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _escape(char: str) -> str:
    # Python's backslash escapes (unicode_escape): \n, \x1b, \u202e, \U0001f600, \\.
    return char.encode("unicode_escape").decode("ascii")


def safe_repr(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """``repr(value)`` that never raises and is never longer than ``limit`` characters.

    ``repr`` of an int over 4300 digits raises ``ValueError`` (CPython's conversion
    limit), and a broken ``__repr__`` may raise anything: neither may turn a config
    error into a different one.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<an integer of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - any object may come from outside
        text = f"<{type(value).__name__} object>"
    return printable(text, limit=limit)


def printable(text: object, *, limit: int | None = DEFAULT_LIMIT) -> str:
    """``text`` as one safe line: secrets masked, control, escape and bidi characters
    escaped, bounded.

    Every registered secret becomes ``***`` (:func:`register_secret`). Newlines become
    ``\\n``, ESC becomes ``\\x1b``, U+202E becomes ``\\u202e``, a backslash
    becomes ``\\\\``; everything else (letters of every script, emoji) is kept. Longer than
    ``limit`` characters (after escaping), it is cut and ends with ``…(N chars)``, N being
    the length received. Not a string: its :func:`safe_repr`.
    """
    if not isinstance(text, str):
        return safe_repr(text, limit=limit or DEFAULT_LIMIT)
    text = mask_secrets(text)
    original = len(text)
    if limit is not None and original > limit * 4:
        text = text[: limit * 4]  # escaping never shortens: nothing that is shown is lost
    text = _UNSAFE_RE.sub(lambda m: _escape(m.group()), text)
    if not text.isascii():
        text = "".join(
            _escape(c) if not c.isascii() and unicodedata.category(c) in _UNSAFE_CATEGORIES
            else c
            for c in text
        )
    if limit is not None and len(text) > limit:
        suffix = f"…({original} chars)"
        text = text[: max(0, limit - len(suffix))] + suffix
    return text


def _replacement(match: re.Match[str]) -> str:
    return " " if match.group() in _LINE_BREAKS else "\ufffd"


def keen_text(text: str) -> str:
    """``text`` as it is sent to Keen: control and bidi characters replaced, visibly.

    Line breaks (CR, LF, CRLF, VT, FF, NEL) become a space; every other C0 control (tab
    is kept), DEL, C1 control and bidi embedding, override or isolate character becomes
    U+FFFD, as invalid Unicode already does. Replaced rather than removed: removing ESC
    from ``ESC ] 52 ; c ; …`` would leave the rest looking like data, and a reader
    should see that something was there. The event builder applies it to every string
    and property name; ``forget`` applies it to the ``userId`` it looks for. Returns
    ``text`` itself when nothing is replaced.
    """
    if KEEN_UNSAFE_RE.search(text) is None:
        return text
    return KEEN_UNSAFE_RE.sub(_replacement, text)


def spaced(text: str) -> str:
    """``text`` with each run of C0 or C1 control characters (tab too) made one space: for
    text kept on one line (the attribution hook, :func:`._http.excerpt`)."""
    return _CONTROLS_RE.sub(" ", text)


def valid_unicode(text: str) -> tuple[str, bool]:
    """``text`` as valid Unicode (lone surrogates -> U+FFFD) and whether it changed.

    A JSON ID token may carry ``"\\ud800"``; Python decodes it to a lone surrogate, which
    cannot be encoded as UTF-8 and would make the outbox, the session cookie or the HTTP
    client raise.
    """
    if text.isascii():
        return text, False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Pairs stored as two lone halves are joined back by the UTF-16 round trip; what
        # remains unpaired becomes U+FFFD.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace"), True
    return text, False
