"""The user search syntax (``GET /api/v2/users?q=...&search_engine=v3``) the emulator needs.

Auth0's search v3 takes Lucene query strings. The emulator understands the subset that
clients of this package (and most scripts) send, and refuses anything else with Auth0's
``400`` shape rather than guessing:

- ``field:"phrase"`` (backslash escapes ``\\"`` and ``\\\\``) and ``field:word``, with a
  trailing ``*`` for a prefix; ``field:("a" OR "b" ...)`` for any of several values;
- ``field:[from TO to]`` / ``{from TO to}`` ranges (``*`` open), for dates and numbers;
- ``AND``, ``OR``, ``NOT`` and parentheses between clauses.

Fields are the user's root attributes and dotted paths into ``app_metadata`` /
``user_metadata``. As at Auth0, ``email``, ``name``, ``nickname``, ``given_name`` and
``family_name`` compare case-insensitively, every other field case-sensitively. A query
made only of ``user_id`` values is answered by id lookups, so the batch lookups the
package makes stay O(1) per id in a tenant of 100,000 users.
"""

from __future__ import annotations

import re
import typing as t
from dataclasses import dataclass

#: Fields Auth0 compares without regard to case.
CASE_INSENSITIVE = frozenset({"email", "name", "nickname", "given_name", "family_name"})
_NUMERIC = frozenset({"logins_count"})
_SPECIAL = set('()[]{}:"')
_WORD_RE = re.compile(r"[A-Za-z0-9_.\-|@+*!#$%&'/=?^`~,;<>\\]+")
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")

Matcher = t.Callable[[dict[str, t.Any]], bool]


class QueryError(ValueError):
    """A query the emulator does not understand (Auth0 would answer 400 too, or differently)."""


@dataclass(frozen=True)
class Query:
    """A compiled query: ``matches(user)``; ``user_ids`` when it is only a user_id lookup."""

    matches: Matcher
    user_ids: frozenset[str] | None


class _Token(t.NamedTuple):
    kind: str  # "phrase", "word", or the special character itself
    text: str


def _tokenize(query: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(query):
        char = query[i]
        if char.isspace():
            i += 1
        elif char == '"':
            i += 1
            out: list[str] = []
            while i < len(query) and query[i] != '"':
                if query[i] == "\\" and i + 1 < len(query):
                    i += 1
                out.append(query[i])
                i += 1
            if i >= len(query):
                raise QueryError("unterminated phrase")
            i += 1
            tokens.append(_Token("phrase", "".join(out)))
        elif char in _SPECIAL:
            tokens.append(_Token(char, char))
            i += 1
        else:
            match = _WORD_RE.match(query, i)
            if match is None:
                raise QueryError(f"unexpected character {char!r}")
            word = re.sub(r"\\(.)", r"\1", match.group())
            tokens.append(_Token("word", word))
            i = match.end()
    return tokens


def _value_of(user: dict[str, t.Any], field: str) -> t.Any:
    if field in user:
        return user[field]
    current: t.Any = user
    for part in field.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current


def _text(value: t.Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _term_matcher(field: str, term: str, phrase: bool) -> Matcher:
    fold = field in CASE_INSENSITIVE
    wanted = term.lower() if fold else term
    prefix = not phrase and wanted.endswith("*")
    if prefix:
        wanted = wanted[:-1]
    if not phrase and "*" in wanted or "?" in wanted and not phrase:
        raise QueryError("wildcards are only supported at the end of a word")

    def matches(user: dict[str, t.Any]) -> bool:
        raw = _value_of(user, field)
        values = raw if isinstance(raw, list) else [raw]
        for value in values:
            text = _text(value)
            if text is None:
                continue
            if fold:
                text = text.lower()
            if text.startswith(wanted) if prefix else text == wanted:
                return True
        return False

    return matches


def _range_matcher(field: str, low: str, high: str, low_inc: bool, high_inc: bool) -> Matcher:
    numeric = field in _NUMERIC

    def key(text: str) -> t.Any:
        if numeric:
            try:
                return float(text)
            except ValueError:
                raise QueryError(f"{text!r} is not a number") from None
        return text

    low_key = None if low == "*" else key(low)
    high_key = None if high == "*" else key(high)

    def matches(user: dict[str, t.Any]) -> bool:
        text = _text(_value_of(user, field))
        if text is None:
            return False
        try:
            value = key(text)
        except QueryError:
            return False
        if low_key is not None and (value < low_key or (value == low_key and not low_inc)):
            return False
        if high_key is not None:
            # A date bound without a time covers its whole day when inclusive.
            bound = high_key
            if not numeric and high_inc and len(high) == 10:
                bound = high + "\uffff"
            if value > bound or (value == bound and not high_inc):
                return False
        return True

    return matches


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        #: user ids when every clause so far is a user_id term joined by OR.
        self.ids: set[str] | None = set()

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str | None = None) -> _Token:
        token = self.peek()
        if token is None or (kind is not None and token.kind != kind):
            raise QueryError("unexpected end of query" if token is None else "syntax error")
        self.pos += 1
        return token

    def is_op(self, name: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "word" and token.text == name

    def parse(self) -> Query:
        matcher = self.or_expr()
        if self.peek() is not None:
            raise QueryError("syntax error")
        ids = frozenset(self.ids) if self.ids else None
        return Query(matcher, ids)

    def or_expr(self) -> Matcher:
        parts = [self.and_expr()]
        while self.is_op("OR"):
            self.take()
            parts.append(self.and_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda user: any(part(user) for part in parts)

    def and_expr(self) -> Matcher:
        parts = [self.unary()]
        while True:
            if self.is_op("AND"):
                self.take()
            elif self.peek() is None or self.peek() == _Token(")", ")") or self.is_op("OR"):
                break
            parts.append(self.unary())
            self.ids = None
        if len(parts) == 1:
            return parts[0]
        return lambda user: all(part(user) for part in parts)

    def unary(self) -> Matcher:
        if self.is_op("NOT"):
            self.take()
            self.ids = None
            inner = self.unary()
            return lambda user: not inner(user)
        token = self.peek()
        if token is not None and token.kind == "(":
            self.take()
            inner = self.or_expr()
            self.take(")")
            return inner
        return self.clause()

    def clause(self) -> Matcher:
        field_token = self.take()
        if field_token.kind != "word" or self.peek() is None or self.peek().kind != ":":  # type: ignore[union-attr]
            raise QueryError("a search term needs a field name (field:value)")
        field = field_token.text
        if not _FIELD_RE.match(field):
            raise QueryError(f"{field!r} is not a field name")
        self.take(":")
        token = self.take()
        if token.kind in ("phrase", "word"):
            self._note_ids(field, [token.text], token.kind == "phrase")
            return _term_matcher(field, token.text, token.kind == "phrase")
        if token.kind == "(":
            terms: list[_Token] = [self.take()]
            while self.is_op("OR"):
                self.take()
                terms.append(self.take())
            self.take(")")
            if any(term.kind not in ("phrase", "word") for term in terms):
                raise QueryError("syntax error in a list of values")
            self._note_ids(field, [term.text for term in terms], True)
            matchers = [_term_matcher(field, x.text, x.kind == "phrase") for x in terms]
            return lambda user: any(m(user) for m in matchers)
        if token.kind in ("[", "{"):
            low = self.take()
            if not self.is_op("TO"):
                raise QueryError("a range is [from TO to]")
            self.take()
            high = self.take()
            end = self.take()
            if end.kind not in ("]", "}") or low.kind not in ("word", "phrase"):
                raise QueryError("a range is [from TO to]")
            if high.kind not in ("word", "phrase"):
                raise QueryError("a range is [from TO to]")
            self.ids = None
            return _range_matcher(field, low.text, high.text, token.kind == "[", end.kind == "]")
        raise QueryError("syntax error")

    def _note_ids(self, field: str, values: list[str], exact: bool) -> None:
        if self.ids is None:
            return
        if field != "user_id" or any(v.endswith("*") for v in values if not exact):
            self.ids = None
            return
        self.ids.update(values)


def compile_query(query: str) -> Query:
    """Parse ``query``; :class:`QueryError` for anything outside the supported subset."""
    tokens = _tokenize(query)
    if not tokens:
        raise QueryError("empty query")
    return _Parser(tokens).parse()
