"""Blinker signals. They observe; they never steer the login.

Every signal is sent with the Flask app (``current_app._get_current_object()``) as sender.
Receivers should accept ``**extra``: payloads may grow. An exception raised by a receiver
is logged and swallowed, so a broken subscriber cannot break a login or the sender.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: A first login was seen, before anything was recorded: the ledger had no marker, and the
#: claim comes next. Two first logins of one user racing (two tabs, two workers or hosts)
#: may each fire it; only one claim wins, and ``signup_recorded`` fires for that one only.
#: Payload: ``user_id`` (the ``sub``), ``claims`` (the validated ID-token claims).
signup_detected = _signals.signal("signup-detected")

#: The signup was accepted: the marker is claimed and the event is queued (background)
#: or about to be sent (sync). Payload: ``user_id``, ``event`` (the Keen event body).
signup_recorded = _signals.signal("signup-recorded")

#: Keen accepted the event. Payload: ``user_id``, ``event``, ``attempts``, and in
#: background mode ``enqueued_at`` (epoch seconds the event entered the outbox: what the
#: delivery-latency metric measures from). In background mode this fires on the sender's
#: thread, with no request context.
signup_delivered = _signals.signal("signup-delivered")

#: A delivery attempt failed and will be retried (background) or was given up for this
#: login (sync). Payload: ``user_id``, ``event``, ``error`` (the exception), ``attempts``.
#: In background mode this fires on the sender's thread, with no request context.
signup_failed = _signals.signal("signup-failed")

#: The event was moved to the dead-letter table (a permanent error, or a retryable one
#: failing for longer than ``KEEN_SIGNUP_RETRY_FOR``).
#: Payload: ``user_id``, ``event``, ``reason``. Fires on the sender's thread.
signup_dead = _signals.signal("signup-dead")

#: The signals by the kind the tracker and the sender ``notify`` (``"detected"``...).
BY_KIND = {name.removeprefix("signup-"): signal for name, signal in _signals.items()}
