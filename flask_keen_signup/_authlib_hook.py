"""How ``@track`` sees what the callback view did: the tokens Authlib's clients put on
``flask.g`` during it, and the status of the response it returned.

The one place that knows where Authlib keeps a token: if Authlib changes that, the change
is here.
"""

from __future__ import annotations

import logging
import typing as t
from collections.abc import Mapping

from flask import g
from werkzeug.wrappers import Response as BaseResponse

logger = logging.getLogger(__name__)

#: Where Authlib's Flask client keeps the token of the current request
#: (``FlaskAppMixin.token`` setter). Private to Authlib: the tests that log in through the
#: real Authlib flow (``tests/integration/test_extension.py`` and others) fail if it changes.
_AUTHLIB_TOKEN_PREFIX = "_oauth_token_"


def _authlib_tokens() -> dict[str, int]:
    """The ids of the Authlib tokens on ``g`` now, to spot the ones the view fetched.

    Runs before the view: it must never raise into it.
    """
    try:
        # One proxy resolution instead of one per attribute: this runs on every callback.
        namespace: dict[str, t.Any] = vars(g._get_current_object())
        return {
            name: id(value)
            for name, value in namespace.items()
            if name.startswith(_AUTHLIB_TOKEN_PREFIX)
        }
    except Exception:  # noqa: BLE001 - no app context, an exotic g: track nothing
        logger.debug("cannot read flask.g before the view", exc_info=True)
        return {}


def _authlib_tokens_changed(before: dict[str, int]) -> list[tuple[str, t.Mapping[str, t.Any]]]:
    changed = []
    for name, token in list(vars(g._get_current_object()).items()):
        if name.startswith(_AUTHLIB_TOKEN_PREFIX) and before.get(name) != id(token):
            if isinstance(token, Mapping):
                changed.append((name[len(_AUTHLIB_TOKEN_PREFIX) :], token))
    return changed


def _status_of(rv: t.Any) -> int:
    """The status Flask will send for a view's return value, without converting it."""
    if isinstance(rv, tuple) and len(rv) in (2, 3):
        status = rv[1]
        if isinstance(status, int):
            return status
        if isinstance(status, str):
            try:
                return int(status.split(maxsplit=1)[0])
            except ValueError:
                return 200
        rv = rv[0]
    return rv.status_code if isinstance(rv, BaseResponse) else 200
