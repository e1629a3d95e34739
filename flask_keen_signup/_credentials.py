"""Config keys that hold or may hold a credential: checked without being quoted, and
registered to be masked (DESIGN §2, guarantee 5).

The Keen keys, the Auth0 client secret and the URL keys (a database or Redis URL carries a
password; a key gets pasted where a port goes) end up, when refused, in start-up logs and CI
output: every error here names the key and the problem, never the value. And every
credential the app is configured with is registered (:func:`._text.register_secret`), so
that a Keen or Auth0 error body, a driver's message or a URL echoing it is masked wherever
it becomes a message. :mod:`.config` calls these while it reads the config.
"""

from __future__ import annotations

import contextlib
import re
import typing as t
from urllib.parse import parse_qsl
from urllib.parse import unquote
from urllib.parse import urlsplit

from ._http import header_value_problem
from ._text import MASK
from ._text import printable
from ._text import register_secret
from .exceptions import ConfigurationError

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask


def check_credential(key: str, value: str | None) -> str | None:
    """A key, secret or token: refused when it cannot travel in an HTTP header.

    ``http.client`` refuses a line break with ``Invalid header value b'<the key>'`` and
    cannot encode what is beyond Latin-1: either way the key would be quoted in an ERROR
    line on every send. At ``init_app`` instead, without the value.
    """
    if value is not None:
        problem = header_value_problem(value)
        if problem is not None:
            raise ConfigurationError(
                f"{key} cannot be sent in an HTTP request: it {problem}. The value is not "
                "shown; copy the key again, without line breaks or other invisible characters"
            )
    return value


#: Hosts of a local Auth0 stand-in (the bundled emulator, a test server).
_LOCAL_HOST_RE = re.compile(
    r"^(localhost|.*\.localhost|\d{1,3}(\.\d{1,3}){3}|\[[0-9a-f:.]+\])$", re.IGNORECASE
)
_AUTH0_HOST_RE = re.compile(r"^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?$")


def auth0_base_url(domain: str, key: str = "KEEN_SIGNUP_AUTH0_DOMAIN") -> str:
    """The Management API's base URL for ``domain``, as ``KEEN_SIGNUP_AUTH0_DOMAIN`` takes it.

    A bare host (``your-tenant.eu.auth0.com``, a custom domain) means https: Auth0 serves
    nothing over plain http. A URL with a scheme (``http://127.0.0.1:4000``, the bundled
    emulator) is kept as given. A bare value that can only be a local stand-in, an IP
    address, ``localhost`` or a port other than 443, is refused: as https it would fail
    later with a TLS error after retries, and the emulator speaks plain http.

    :raises ConfigurationError: naming ``key`` and the problem, never the value.
    """
    text = domain.strip().rstrip("/")
    scheme, has_scheme, rest = text.rpartition("://")
    if has_scheme and scheme.lower() not in ("http", "https"):
        raise ConfigurationError(
            f"{key} must be a host name (your-tenant.eu.auth0.com) or an http(s) URL "
            "(http://127.0.0.1:4000 for the emulator); its scheme is neither"
        )
    match = _AUTH0_HOST_RE.match(rest)
    if match is None:
        raise ConfigurationError(
            f"{key} must be a host name such as your-tenant.eu.auth0.com, or an http(s) base "
            "URL such as http://127.0.0.1:4000 for the emulator: a host and an optional port, "
            "no path, user or password (the value is not shown: it may hold a secret)"
        )
    host, port = match.group(1), (match.group(2) or ":")[1:]
    if port and int(port) > 65535:
        raise ConfigurationError(f"{key} has a port above 65535")
    if has_scheme:
        return f"{scheme.lower()}://{rest}"
    if _LOCAL_HOST_RE.match(host) or (port and port != "443"):
        raise ConfigurationError(
            f"{key} looks like a local server (an IP address, localhost or a port other "
            "than 443) but has no scheme, and a bare host means https://. Add http:// in "
            "front of it for the Auth0 emulator, which speaks plain HTTP (e.g. "
            "http://127.0.0.1:4000), or https:// if that server really serves TLS"
        )
    return f"https://{rest}"


def url_secrets(url: object) -> list[str]:
    """The passwords a database or Redis URL (or a ``key=value`` conninfo string) holds:
    ``user:password@``, ``?password=`` and ``password=...``."""
    if not isinstance(url, str):
        return []
    found: list[str] = []
    with contextlib.suppress(ValueError):  # not a URL: the conninfo pattern below
        parts = urlsplit(url)
        if parts.password:
            found += [parts.password, unquote(parts.password)]  # as written, as sent
        found += [v for k, v in parse_qsl(parts.query) if k.lower() in ("password", "passwd")]
    for match in re.finditer(r"\bpassword\s*=\s*('((?:[^'\\]|\\.)*)'|[^\s']+)", url):
        quoted = match.group(2)
        if quoted is None:
            found.append(match.group(1))
        else:
            found += [quoted, re.sub(r"\\(.)", r"\1", quoted)]
    return list(dict.fromkeys(found))


def url_error(key: str, exc: BaseException, url: str) -> ConfigurationError:
    """The error for a URL key a driver refused: the driver's reason, with every piece of
    the URL masked (``Port could not be cast to integer value as '<a password>'``)."""
    text = str(exc)
    pieces = {p for p in re.split(r"[\s:/@?&=#;,'\"\\]+", url) if len(p) >= 3}
    for piece in sorted(pieces, key=len, reverse=True):
        text = text.replace(piece, MASK)
    return ConfigurationError(
        f"{key} is not usable: {printable(text)} (the value is not shown: it may hold a password)"
    )


def check_url_port(key: str, url: str) -> None:
    """Refuse a URL whose port is not a number from 0 to 65535 (a password or key pasted
    after the host's ``:``), naming ``key`` only. Each host of a comma-separated list
    (``redis+cluster://h1:7000,h2:7001/0``) is checked."""
    if "://" not in url:
        return  # a key=value conninfo string: psycopg checks it
    try:
        hosts = urlsplit(url).netloc.rpartition("@")[2]
    except ValueError:
        hosts = ""
    for host in hosts.split(","):
        port = host.rpartition("]")[2] if host.startswith("[") else host
        digits = port.rpartition(":")[2] if ":" in port else ""
        valid = not digits or (digits.isascii() and digits.isdigit() and int(digits) <= 65535)
        if not valid:
            raise ConfigurationError(
                f"{key} has an invalid port: after the host's ':' only digits from 0 to "
                "65535 may follow (the value is not shown: it may hold a password)"
            )


#: Config keys whose values are credentials, or may contain one.
CREDENTIAL_KEYS = (
    "KEEN_WRITE_KEY",
    "KEEN_MASTER_KEY",
    "KEEN_READ_KEY",
    "KEEN_SIGNUP_AUTH0_CLIENT_SECRET",
    "AUTH0_CLIENT_SECRET",
)
URL_KEYS = (
    "KEEN_SIGNUP_DATABASE_URL",
    "KEEN_SIGNUP_DATABASE_LISTEN_URL",
    "KEEN_SIGNUP_REDIS_URL",
)


def register_config_secrets(config: t.Mapping[str, t.Any]) -> None:
    """Register every credential of ``config`` to be masked in messages (module doc):
    the keys and secrets as given, and the passwords inside the URL keys. ``AUTH0_*``
    and ``KEEN_READ_KEY`` are not ours but are as secret, and may be echoed as well."""
    for key in CREDENTIAL_KEYS:
        value = config.get(key)
        if isinstance(value, str):
            register_secret(value, value.strip())
    for key in URL_KEYS:
        register_secret(*url_secrets(config.get(key)))


def register_authlib_secrets(app: Flask) -> None:
    """Register the client secrets of the app's Authlib clients registered so far (the
    login client's: Auth0's quickstart passes it to ``oauth.register``, not to
    ``app.config``). Authlib keeps them in private attributes: when those change, this
    finds none, and ``AUTH0_CLIENT_SECRET`` in ``app.config`` still counts."""
    oauth = app.extensions.get("authlib.integrations.flask_client")
    with contextlib.suppress(Exception):  # Authlib's internals changed: config still counts
        for _, kwargs in getattr(oauth, "_registry", {}).values():
            register_secret(kwargs.get("client_secret"))
        for client in getattr(oauth, "_clients", {}).values():
            register_secret(getattr(client, "client_secret", None))
