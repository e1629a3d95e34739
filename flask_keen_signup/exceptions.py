"""The package's exceptions.

Everything the package raises on purpose derives from :class:`KeenSignupError`::

    KeenSignupError
    ├── ConfigurationError          bad or missing config, raised at ``init_app``
    ├── MissingDependencyError      an optional extra (e.g. ``redis``) is not installed
    ├── InvalidClaimsError          a token without ``userinfo``, a missing or empty ``sub``
    ├── StoreError                  the signedUp marker store failed
    └── RemoteError                 a call to Keen or Auth0 failed (.retryable, .retry_after)
        ├── KeenError
        │   ├── KeenAPIError        Keen answered non-2xx (.status_code, .error_code, .message)
        │   │   └── KeenRequestTooLargeError   413: split the batch and retry
        │   └── KeenConnectionError          connection error or timeout
        └── Auth0Error
            ├── Auth0APIError       the Management or Authentication API answered an error
            └── Auth0ConnectionError

No message, ``repr`` or attribute of these exceptions ever carries a Keen key, an Auth0
client secret or an access token: they are built from status codes and the remote's own
error text only.
"""

from __future__ import annotations


class KeenSignupError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(KeenSignupError, ValueError):
    """The app's configuration is missing or invalid. Raised at ``init_app``, never later."""


class MissingDependencyError(KeenSignupError, ImportError):
    """An optional dependency is needed for the configured feature but is not installed."""


class InvalidClaimsError(KeenSignupError, ValueError):
    """The token or claims cannot identify a user (no ``userinfo``, missing ``sub``, ...)."""


class StoreError(KeenSignupError):
    """The signedUp marker store could not be read or written."""


class RemoteError(KeenSignupError):
    """A call to a remote service failed.

    :param retryable: whether the same request may succeed later (timeouts, 408, 429, 5xx).
    :param retry_after: seconds the remote asked us to wait, if it said so.
    :param status_code: the HTTP status, or ``None`` when no response arrived.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status_code = status_code


class KeenError(RemoteError):
    """A write to Keen failed."""


class KeenAPIError(KeenError):
    """Keen answered with a non-2xx status.

    :param error_code: Keen's ``error_code`` (e.g. ``InvalidPropertyNameError``), or the
        status as a string when the body was not Keen's JSON error shape.
    :param api_message: Keen's ``message``, truncated.
    """

    def __init__(
        self,
        status_code: int,
        error_code: str,
        api_message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            f"Keen answered {status_code} {error_code}: {api_message}",
            retryable=retryable,
            retry_after=retry_after,
            status_code=status_code,
        )
        self.error_code = error_code
        self.api_message = api_message


class KeenRequestTooLargeError(KeenAPIError):
    """Keen refused the request body as too large (413). The caller should split it.

    :param request_bytes: the size of the refused body.
    """

    def __init__(self, error_code: str, api_message: str, *, request_bytes: int) -> None:
        super().__init__(413, error_code, api_message, retryable=False)
        self.request_bytes = request_bytes


class KeenConnectionError(KeenError):
    """No usable answer from Keen: connection refused or reset, timeout, TLS failure."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class Auth0Error(RemoteError):
    """A call to Auth0's Authentication or Management API failed."""


class Auth0APIError(Auth0Error):
    """Auth0 answered with an error status.

    :param error_code: Auth0's ``errorCode`` / ``error``, or the status as a string.
    :param api_message: Auth0's ``message`` / ``error_description``, truncated.
    """

    def __init__(
        self,
        status_code: int,
        error_code: str,
        api_message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            f"Auth0 answered {status_code} {error_code}: {api_message}",
            retryable=retryable,
            retry_after=retry_after,
            status_code=status_code,
        )
        self.error_code = error_code
        self.api_message = api_message


class Auth0ConnectionError(Auth0Error):
    """No usable answer from Auth0: connection refused or reset, timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)
