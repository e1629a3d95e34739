"""Record each user's signup to Keen IO from the Authlib Auth0 login callback.

Exactly once, never lost, never slowing or breaking login. See the README and ``docs/``.
"""

from __future__ import annotations

from .exceptions import ConfigurationError as ConfigurationError
from .exceptions import InvalidClaimsError as InvalidClaimsError
from .exceptions import KeenSignupError as KeenSignupError
from .extension import KeenSignup as KeenSignup
from .signals import signup_dead as signup_dead
from .signals import signup_delivered as signup_delivered
from .signals import signup_detected as signup_detected
from .signals import signup_failed as signup_failed
from .signals import signup_recorded as signup_recorded
from .state import SignupState as SignupState
from .state import signup_state as signup_state
from .tracker import TrackOutcome as TrackOutcome

__all__ = [
    "ConfigurationError",
    "InvalidClaimsError",
    "KeenSignup",
    "KeenSignupError",
    "SignupState",
    "TrackOutcome",
    "signup_dead",
    "signup_delivered",
    "signup_detected",
    "signup_failed",
    "signup_recorded",
    "signup_state",
]
