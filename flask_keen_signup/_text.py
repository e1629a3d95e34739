"""Untrusted text made safe for one line of a terminal or a log.

A user's ``sub`` and ``name``, Keen's and Auth0's error messages and config values all come
from outside. Printed as received, a newline forges a row of ``flask keen-signup dead`` or
a log line, an ANSI escape sequence (``ESC [ 31 m``, or worse, one that rewrites the
title or the clipboard) reaches the operator's terminal, and a right-to-left override
(U+202E) shows the text backwards. :func:`printable` escapes all of them, visibly, and
bounds the length, so what is shown is one honest line.
"""

from __future__ import annotations

import re
import unicodedata

#: Characters that are escaped: C0 and C1 controls, DEL, the backslash (so that an escape
#: in the output is always ours), and the Unicode line/paragraph separators.
_UNSAFE_RE = re.compile("[\\x00-\\x1f\\x7f-\\x9f\\\\\u2028\u2029]")
#: Invisible formatting (bidi overrides and isolates, zero-width characters), surrogates,
#: unassigned and private-use code points: escaped too (checked per character only when
#: the fast test below finds a non-ASCII character).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}

#: Default maximum length, in characters, of what :func:`printable` returns.
DEFAULT_LIMIT = 200


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


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
    """``text`` as one safe line: control, escape and bidi characters escaped, bounded.

    Newlines become ``\\n``, ESC becomes ``\\x1b``, U+202E becomes ``\\u202e``, a backslash
    becomes ``\\\\``; everything else (letters of every script, emoji) is kept. Longer than
    ``limit`` characters (after escaping), it is cut and ends with ``…(N chars)``, N being
    the length received. Not a string: its :func:`safe_repr`.
    """
    if not isinstance(text, str):
        return safe_repr(text, limit=limit or DEFAULT_LIMIT)
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
