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

after which ``KEEN_SIGNUP_STORE = "mystore"`` is accepted. A
:class:`~flask_keen_signup.stores.MarkerStore` *instance* in ``KEEN_SIGNUP_STORE`` still
works too: it is wired by :mod:`.custom` (claim, then queue in the SQLite outbox).
"""

from __future__ import annotations

import dataclasses
import typing as t

from .parts import ClaimAndEnqueue as ClaimAndEnqueue
from .parts import ClaimAndEnqueueMany as ClaimAndEnqueueMany
from .parts import InTransaction as InTransaction
from .parts import Parts as Parts
from .parts import RecentUserIds as RecentUserIds
from .parts import RemoteMarkers as RemoteMarkers
from .parts import Wiring as Wiring

if t.TYPE_CHECKING:  # pragma: no cover
    from ..stores import MarkerStore


@dataclasses.dataclass(frozen=True)
class Backend:
    """A ``KEEN_SIGNUP_STORE`` name and how to build its :class:`Parts`.

    :param build: ``build(wiring)``; raises
        :class:`~flask_keen_signup.exceptions.ConfigurationError` for a setting it cannot use.
    """

    name: str
    build: t.Callable[[Wiring], Parts]


def _lazy(module: str) -> t.Callable[[Wiring], Parts]:
    """``build`` of the backend module ``module``, imported only when that store is used
    (the Redis and PostgreSQL clients are optional dependencies)."""

    def build(wiring: Wiring) -> Parts:
        import importlib

        built: Parts = importlib.import_module(f"{__name__}.{module}").build(wiring)
        return built

    build.__qualname__ = build.__name__ = f"build_{module}"
    return build


#: ``KEEN_SIGNUP_STORE`` names, in the order the docs list them. Add an entry to add one.
REGISTRY: dict[str, Backend] = {
    name: Backend(name, _lazy(name)) for name in ("sqlite", "session", "auth0", "redis", "postgres")
}


def parts_for(store: str | MarkerStore, wiring: Wiring) -> Parts:
    """The parts of ``KEEN_SIGNUP_STORE`` (a registered name, or a store instance)."""
    if isinstance(store, str):
        return REGISTRY[store].build(wiring)
    from .custom import build_for_instance

    return build_for_instance(store, wiring)


__all__ = [
    "REGISTRY",
    "Backend",
    "ClaimAndEnqueue",
    "ClaimAndEnqueueMany",
    "InTransaction",
    "Parts",
    "RemoteMarkers",
    "Wiring",
    "parts_for",
]
