"""Store backends: ``KEEN_SIGNUP_STORE``'s name, mapped to the parts it is made of.

Each backend is one small module here that builds its :class:`Parts` from the app's
settings (:class:`Wiring`), and one entry in :data:`REGISTRY`. The rest of the package
asks the parts what they can do (an atomic claim-and-enqueue, a ledger to load known
users from, a place to confirm delivered users, a migration ledger...) and never tests a
backend's type: adding a backend touches no other module. ``tests/integration/test_backends.py``
checks both.

A custom backend is a function ``build(wiring) -> Parts`` and a line::

    from flask_keen_signup.backends import REGISTRY, Backend

    REGISTRY["mystore"] = Backend("mystore", build)

after which ``KEEN_SIGNUP_STORE = "mystore"`` is accepted. A backend that needs settings
checks them in ``Backend.validate(settings)``, which :func:`~flask_keen_signup.config.load_settings`
calls at ``init_app`` (the built-in ones: each module's ``validate``). A
:class:`~flask_keen_signup.stores.MarkerStore` *instance* in ``KEEN_SIGNUP_STORE`` still
works too: it is wired by :mod:`.custom` (claim, then queue in the SQLite outbox).
"""

from __future__ import annotations

import dataclasses
import importlib
import typing as t

from .._config_values import _as_choice
from ..exceptions import ConfigurationError
from .parts import Parts as Parts
from .parts import Wiring as Wiring

if t.TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from ..stores import MarkerStore


@dataclasses.dataclass(frozen=True)
class Backend:
    """A ``KEEN_SIGNUP_STORE`` name and how to build its :class:`Parts`.

    :param build: ``build(wiring)``; raises
        :class:`~flask_keen_signup.exceptions.ConfigurationError` for a setting it cannot use.
    :param validate: ``validate(settings)``, called by ``load_settings`` (``init_app``):
        raises ``ConfigurationError``, naming the key, for a setting this store needs.
    """

    name: str
    build: t.Callable[[Wiring], Parts]
    validate: t.Callable[[Settings], None] | None = None


def _lazy(module: str, function: str) -> t.Callable[[t.Any], t.Any]:
    """``function`` of the backend module ``module``, imported only when that store is used
    (the Redis and PostgreSQL clients are optional dependencies)."""

    def call(argument: t.Any) -> t.Any:
        return getattr(importlib.import_module(f"{__name__}.{module}"), function)(argument)

    call.__qualname__ = call.__name__ = f"{function}_{module}"
    return call


#: ``KEEN_SIGNUP_STORE`` names, in the order the docs list them. Add an entry to add one.
REGISTRY: dict[str, Backend] = {
    name: Backend(name, _lazy(name, "build"), _lazy(name, "validate") if checked else None)
    for name, checked in (
        ("sqlite", False),
        ("session", False),
        ("auth0", True),
        ("redis", True),
        ("postgres", True),
    )
}
#: The built-in ``KEEN_SIGNUP_STORE`` names.
STORE_NAMES = tuple(REGISTRY)
#: ``KEEN_SIGNUP_STORE`` when it is not set.
DEFAULT_STORE = "sqlite"


def check_store(value: object) -> str | MarkerStore:
    """``KEEN_SIGNUP_STORE``: a registered name (any case), or a store instance."""
    if isinstance(value, str):
        return _as_choice("KEEN_SIGNUP_STORE", value, tuple(REGISTRY))
    from ..stores import MarkerStore

    if not isinstance(value, MarkerStore):
        raise ConfigurationError(
            "KEEN_SIGNUP_STORE must be one of "
            f"{', '.join(REGISTRY)} or a flask_keen_signup.stores.MarkerStore instance; "
            f"got {type(value).__name__}"
        )
    return value


def check_settings(settings: Settings) -> None:
    """Let the backend of ``KEEN_SIGNUP_STORE`` refuse settings it cannot work with."""
    backend = REGISTRY.get(settings.store) if isinstance(settings.store, str) else None
    if backend is not None and backend.validate is not None:
        backend.validate(settings)


def parts_for(store: str | MarkerStore, wiring: Wiring) -> Parts:
    """The parts of ``KEEN_SIGNUP_STORE`` (a registered name, or a store instance)."""
    if isinstance(store, str):
        return REGISTRY[store].build(wiring)
    from .custom import build_for_instance

    return build_for_instance(store, wiring)

