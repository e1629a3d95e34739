"""The package's exceptions.

Everything the package raises on purpose derives from :class:`KeenSignupError`::

    KeenSignupError
    ├── ConfigurationError          bad or missing config, raised at ``init_app``
    ├── MissingDependencyError      an optional extra (e.g. ``redis``) is not installed
    ├── InvalidClaimsError          a token without ``userinfo``, a missing or empty ``sub``
    ├── StoreError                  the signedUp marker store failed
    └── RemoteError                 a call to Keen or Auth0 failed (.retryable, .retry_after)
        ├── RemoteAPIError          the remote answered an error (.status_code, .error_code,
        │                           .api_message); base of KeenAPIError and Auth0APIError
        ├── KeenError
        │   ├── KeenAPIError        Keen answered non-2xx (also a RemoteAPIError)
        │   │   └── KeenRequestTooLargeError   413: split the batch and retry
        │   └── KeenConnectionError          connection error or timeout
        └── Auth0Error
            ├── Auth0APIError       the Management or Authentication API answered an error
            │                       (also a RemoteAPIError)
            └── Auth0ConnectionError

``except RemoteAPIError`` catches an error answer from either service; ``except KeenError``
or ``except Auth0Error`` everything that went wrong with one of them.

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


class RemoteAPIError(RemoteError):
    """The remote service answered, with an error status.

    Built from the status and the remote's own (redacted, truncated) error text only.

    :param status_code: the HTTP status.
    :param error_code: the remote's error code, or the status as a string when the body
        was not the remote's error shape (an HTML page from a proxy).
    :param api_message: the remote's error message, truncated.
    :param retryable: whether the same request may succeed later.
    :param retry_after: seconds the remote asked us to wait, if it said so.
    """

    #: The service named in the message, ``"{service} answered 429 ..."``.
    service = "The remote service"
    status_code: int

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
            f"{self.service} answered {status_code} {error_code}: {api_message}",
            retryable=retryable,
            retry_after=retry_after,
            status_code=status_code,
        )
        self.error_code = error_code
        self.api_message = api_message


class KeenError(RemoteError):
    """A write to Keen failed."""


class KeenAPIError(KeenError, RemoteAPIError):
    """Keen answered with a non-2xx status.

    ``error_code`` is Keen's (e.g. ``InvalidPropertyNameError``), or the status as a
    string when the body was not Keen's JSON error shape; ``api_message`` is Keen's
    ``message``, truncated.
    """

    service = "Keen"


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


class Auth0APIError(Auth0Error, RemoteAPIError):
    """Auth0 answered with an error status.

    ``error_code`` is Auth0's ``errorCode`` / ``error``, or the status as a string;
    ``api_message`` is Auth0's ``message`` / ``error_description``, truncated.
    """

    service = "Auth0"


class Auth0ConnectionError(Auth0Error):
    """No usable answer from Auth0: connection refused or reset, timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)
