"""The Management API token cache: one token per client, shared by every thread.

The token is cached until ``token_leeway`` seconds before it expires, so it never expires
between our check and Auth0's. Renewal is serialised by a lock: many threads needing a
token at once make one token request, and when that request fails the threads that waited
for it get (a copy of) its error instead of each hitting a broken token endpoint again.
Fetching the token (the client-credentials grant, always with the ``audience``) is the
transport's job (:meth:`.transport.Transport._fetch_token`); this module only remembers.
"""

from __future__ import annotations

import dataclasses
import threading
import typing as t

from ..exceptions import Auth0Error

if t.TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

#: Used when a token response omits ``expires_in`` (Auth0 always sends it; be safe).
FALLBACK_EXPIRES_IN = 3600.0


@dataclasses.dataclass(frozen=True)
class _Token:
    """A cached access token. Kept as one object so a reader never sees a torn update."""

    value: str = dataclasses.field(repr=False)
    #: When Auth0 says the token expires (our clock).
    expires_at: float
    #: When we stop using it and fetch a new one (``expires_at - token_leeway``).
    renew_at: float


def _copy_error(exc: Auth0Error) -> Auth0Error:
    """A fresh exception equal to ``exc``, so threads never share one traceback."""
    copy = type(exc).__new__(type(exc), *exc.args)
    copy.__dict__.update(exc.__dict__)
    return copy


class TokenCache:
    """The cached token of one client, renewed ``leeway`` seconds before it expires.

    :param fetch: returns ``(access_token, expires_in)`` or raises :class:`Auth0Error`.
    :param clock: epoch seconds (injectable for tests of expiry).
    """

    def __init__(
        self,
        fetch: Callable[[], tuple[str, float]],
        clock: Callable[[], float],
        leeway: float,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self.leeway = leeway
        self._lock = threading.Lock()
        self.current: _Token | None = None
        #: Token requests completed (success or failure); lets waiters share one result.
        self._fetches = 0
        self._error: Auth0Error | None = None

    def get(self) -> tuple[str, bool]:
        """Return ``(access_token, fetched_by_this_call)``.

        Fast path without the lock; otherwise one thread fetches while the others wait
        on the lock and then use its token, or its error when the fetch failed while
        they waited (so a broken token endpoint is not hit once per waiting thread).
        """
        token = self.current
        if token is not None and self._clock() < token.renew_at:
            return token.value, False
        fetches_seen = self._fetches
        with self._lock:
            token = self.current
            now = self._clock()
            if token is not None and now < token.renew_at:
                return token.value, False
            if self._fetches != fetches_seen:
                # Another thread fetched while we waited: use its result, even when a
                # tiny lifetime already puts the token inside the leeway.
                if self._error is not None:
                    raise _copy_error(self._error)
                if token is not None and now < token.expires_at:
                    return token.value, False
            try:
                value, expires_in = self._fetch()
            except Auth0Error as exc:
                self._error = exc
                self._fetches += 1
                raise
            now = self._clock()
            self.current = _Token(
                value=value,
                expires_at=now + expires_in,
                renew_at=now + expires_in - self.leeway,
            )
            self._error = None
            self._fetches += 1
            return value, True

    def drop(self, value: str) -> None:
        """Forget ``value`` if it is still the cached token (another thread may have
        replaced it already, and that newer token must survive)."""
        with self._lock:
            if self.current is not None and self.current.value == value:
                self.current = None
