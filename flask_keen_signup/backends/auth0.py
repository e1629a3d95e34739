"""``KEEN_SIGNUP_STORE = "auth0"``: the marker in the user's ``app_metadata``.

The Management API is a remote store with no atomic claim, so the local SQLite ledger
claims (in one transaction with the queued event, as for ``sqlite``) and the remote
marker is checked before sending and set after delivery (:mod:`~flask_keen_signup.hooks`;
in sync mode, by the tracker in the request).
"""

from __future__ import annotations

import dataclasses
import typing as t

from ..exceptions import ConfigurationError
from . import sqlite
from .parts import Parts
from .parts import Wiring

if t.TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings


def validate(settings: Settings) -> None:
    """The Management API's machine-to-machine credentials are required."""
    for key, value in (
        ("KEEN_SIGNUP_AUTH0_DOMAIN", settings.auth0_domain),
        ("KEEN_SIGNUP_AUTH0_CLIENT_ID", settings.auth0_client_id),
        ("KEEN_SIGNUP_AUTH0_CLIENT_SECRET", settings.auth0_client_secret),
    ):
        if settings.enabled and not value:
            raise ConfigurationError(
                f"{key} is required with KEEN_SIGNUP_STORE = 'auth0' "
                "(Management API machine-to-machine credentials)"
            )


def build(wiring: Wiring) -> Parts:
    """The ``sqlite`` backend's parts, with the Auth0 store as the marker of record."""
    from ..auth0 import management_client_for
    from ..stores.auth0 import Auth0Store

    settings = wiring.settings
    # In sync mode the Management API is called in the login request: keep its retry
    # budget small so a rate-limited tenant slows a login by seconds, not half a minute.
    in_request = settings.delivery == "sync"
    management = management_client_for(
        settings,
        max_retries=1 if in_request else 3,
        max_retry_wait=1.0 if in_request else 10.0,
    )
    store = Auth0Store(management, settings.marker)
    return dataclasses.replace(sqlite.build(wiring), store=store, remote=store)
