"""Faithful local emulators of Keen's write API and of Auth0, for tests and offline demos.

``from flask_keen_signup.testing import KeenEmulator, Auth0Emulator``. Both are context
managers serving on a real port of 127.0.0.1; ``.url`` is the base URL.
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:  # pragma: no cover
    from .auth0 import Auth0Emulator as Auth0Emulator
    from .keen import KeenEmulator as KeenEmulator

__all__ = ["Auth0Emulator", "KeenEmulator"]


def __getattr__(name: str) -> t.Any:
    # Imported lazily so that importing one emulator does not pull in the other's deps.
    if name == "KeenEmulator":
        from .keen import KeenEmulator

        return KeenEmulator
    if name == "Auth0Emulator":
        from .auth0 import Auth0Emulator

        return Auth0Emulator
    raise AttributeError(name)
