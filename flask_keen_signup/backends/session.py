"""``KEEN_SIGNUP_STORE = "session"``: the marker in the browser's session, per browser.

The event is queued in the SQLite outbox. The claim is made in the login request (the
session is reachable only there), so a spooled signup is only queued by the drain, and
the sender has no session to confirm in: it confirms in the file's ledger, as before.
"""

from __future__ import annotations

from .parts import Parts
from .parts import Wiring
from .sqlite import apart


def build(wiring: Wiring) -> Parts:
    from ..stores.session import SessionStore

    return apart(SessionStore(wiring.settings.collection), wiring, in_request_only=True)
