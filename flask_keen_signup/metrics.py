"""Prometheus metrics (``flask-keen-signup[metrics]``): what operators graph and alert on.

Two kinds, kept the way ``prometheus_client`` expects each to be kept:

* **Counted as things happen** — ``keen_signup_signups_total{outcome}`` and the histogram
  ``keen_signup_delivery_latency_seconds`` (recorded → delivered, from the outbox row's
  enqueue time). They are ``prometheus_client`` objects in its default registry, fed by
  the extension's notifier (the same notifications as its blinker signals, without a signal
  dispatch), so under gunicorn with ``PROMETHEUS_MULTIPROC_DIR`` set they live in
  ``prometheus_client``'s per-process files and a ``MultiProcessCollector`` adds them up
  across workers: each signup is counted once by the process that recorded it, and once
  more by the process whose sender delivered it. Counting starts at ``init_app`` when
  ``prometheus_client`` is importable (nothing is imported otherwise) and
  ``KEEN_SIGNUP_METRICS`` is not ``False``, *before* the sender starts: a worker that boots
  (or is recycled) while other processes' signups are due delivers them in its sender's
  first pass, and that delivery is counted too.
* **Read at scrape time** — ``keen_signup_outbox_events{state}``,
  ``keen_signup_oldest_pending_age_seconds`` and ``keen_signup_circuit_open``, by the
  collector :meth:`KeenSignup.register_metrics` adds. They describe shared state (the
  outbox), so they are read from it when scraped and never written to the multiprocess
  files, where they would be summed over workers. ``circuit_open`` is the circuit of the
  sender in the process that answers the scrape (every worker's sender sends to the same
  Keen, so an outage opens them all).

Names and labels are DESIGN §9's; ``docs/metrics.md`` has the dashboard and alert rules.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
import typing as t
import weakref

from . import lifecycle
from .exceptions import ConfigurationError

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from .state import SignupState

logger = logging.getLogger(__name__)

SIGNUPS = "keen_signup_signups_total"
OUTBOX_EVENTS = "keen_signup_outbox_events"
OLDEST_PENDING_AGE = "keen_signup_oldest_pending_age_seconds"
DELIVERY_LATENCY = "keen_signup_delivery_latency_seconds"
CIRCUIT_OPEN = "keen_signup_circuit_open"
#: Every metric name this package exports (the docs' dashboard and alerts use only these).
METRIC_NAMES = (SIGNUPS, OUTBOX_EVENTS, OLDEST_PENDING_AGE, DELIVERY_LATENCY, CIRCUIT_OPEN)

#: ``outcome`` label values. ``failed`` counts failed attempts (retried later), so one
#: signup may count several times; ``spooled`` counts signups parked in the local spool
#: because the store was too slow (it stays 0 where the spool does not exist).
OUTCOMES = ("recorded", "delivered", "dead", "failed", "spooled", "not_recorded")
#: ``state`` label values; disjoint, so their sum is every undelivered event.
OUTBOX_STATES = ("pending", "in_flight", "dead")
#: Delivery latency buckets, seconds: a healthy sender delivers in well under a second;
#: an outage stretches it to hours.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)

_lock = threading.Lock()
#: The process's counter and histogram (one pair per process, in the default registry).
_metrics: tuple[t.Any, t.Any] | None = None
#: Held around every increment, and by a fork while it happens: no increment is in flight
#: while the process forks. ``prometheus_client``'s multiprocess values share one lock per
#: process. Under ``gunicorn --preload`` the master's sender counts its deliveries; a
#: worker forked while that thread held the lock would inherit it held, and its first
#: count (a signup in a login request) would wait forever.
_count_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _count_lock
    _count_lock = threading.Lock()


lifecycle.register(
    "metrics",
    before=lambda: _count_lock.acquire(),
    after_in_parent=lambda: _count_lock.release(),
    after_in_child=_after_fork_in_child,
)
_registered: weakref.WeakKeyDictionary[t.Any, set[int]] = weakref.WeakKeyDictionary()


def available() -> bool:
    """Whether ``prometheus_client`` is installed (it is not imported until used)."""
    return importlib.util.find_spec("prometheus_client") is not None


def _get_metrics() -> tuple[t.Any, t.Any]:
    global _metrics
    with _lock:
        if _metrics is None:
            from prometheus_client import Counter
            from prometheus_client import Histogram

            signups = Counter(
                SIGNUPS,
                "Signups by outcome: recorded (claimed and queued), delivered (Keen "
                "accepted), dead (dead-lettered), failed (a failed attempt, retried), "
                "spooled, not_recorded (neither the store nor the spool could take it: lost).",
                ["outcome"],
            )
            for outcome in OUTCOMES:
                signups.labels(outcome)  # every series exists from the start, at 0
            latency = Histogram(
                DELIVERY_LATENCY,
                "Seconds from a signup being recorded in the outbox to Keen accepting it.",
                buckets=LATENCY_BUCKETS,
            )
            _metrics = (signups, latency)
        return _metrics


def enabled(app: Flask) -> bool:
    """``KEEN_SIGNUP_METRICS`` (default ``True``): ``False`` keeps no metrics at all."""
    from ._config_values import _as_bool

    return _as_bool("KEEN_SIGNUP_METRICS", app.config.get("KEEN_SIGNUP_METRICS", True))


#: ``count(kind, payload)``: called by the extension's notifier for every notification.
Count = t.Callable[[str, t.Mapping[str, t.Any]], None]
_counters: weakref.WeakKeyDictionary[t.Any, Count] = weakref.WeakKeyDictionary()


def start_counting(app: Flask) -> Count | None:
    """The counting function of ``app`` (made once), or ``None`` when ``KEEN_SIGNUP_METRICS``
    is off or ``prometheus_client`` is not installed.

    The extension calls it from its notifier, beside the blinker signals: the same events,
    without a signal dispatch per signup (``bench/attribution_metrics.py`` measures it).
    """
    existing = _counters.get(app)
    if existing is not None:
        return existing
    if not enabled(app) or not available():
        return None
    signups, latency = _get_metrics()
    children = {outcome: signups.labels(outcome) for outcome in OUTCOMES}

    def count(kind: str, payload: t.Mapping[str, t.Any]) -> None:
        child = children.get(kind)
        if child is None:  # "detected": not an outcome
            return
        seconds = None
        if kind == "delivered":
            enqueued_at = payload.get("enqueued_at")
            if isinstance(enqueued_at, (int, float)):
                seconds = max(0.0, time.time() - enqueued_at)
        with _count_lock:
            child.inc()
            if seconds is not None:
                latency.observe(seconds)

    _counters[app] = count
    return count


def counter_for(app: Flask) -> Count | None:
    """``app``'s counting function if :func:`start_counting` made one."""
    return _counters.get(app)


class OutboxCollector:
    """Reads one app's outbox and circuit when scraped (``prometheus_client`` collector)."""

    def __init__(self, state: SignupState) -> None:
        self._state = weakref.ref(state)

    def describe(self) -> list[t.Any]:
        return self._families()

    def collect(self) -> list[t.Any]:
        state = self._state()
        if state is None:
            return []
        from .health import health_of

        try:
            health = health_of(state)
        except Exception:  # noqa: BLE001 - a scrape must answer; absent series alert
            logger.warning("flask-keen-signup: cannot read the outbox for metrics", exc_info=True)
            return []
        return self._families(health)

    @staticmethod
    def _families(health: t.Mapping[str, t.Any] | None = None) -> list[t.Any]:
        from prometheus_client.core import GaugeMetricFamily

        events = GaugeMetricFamily(
            OUTBOX_EVENTS,
            "Events in the outbox now, by state (pending: waiting; in_flight: being sent; "
            "dead: dead letters).",
            labels=["state"],
        )
        oldest = GaugeMetricFamily(
            OLDEST_PENDING_AGE, "Age in seconds of the oldest undelivered event (0 when none)."
        )
        circuit = GaugeMetricFamily(
            CIRCUIT_OPEN,
            "1 while the sender's circuit breaker is open or half-open (Keen failing), else 0.",
        )
        if health is not None:
            pending = int(health.get("pending") or 0)
            in_flight = int(health.get("in_flight") or 0)
            events.add_metric(["pending"], max(0, pending - in_flight))
            events.add_metric(["in_flight"], in_flight)
            events.add_metric(["dead"], int(health.get("dead") or 0))
            oldest.add_metric([], float(health.get("oldest_pending_age") or 0.0))
            is_open = health.get("circuit") in ("open", "half-open")
            circuit.add_metric([], 1.0 if is_open else 0.0)
        return [events, oldest, circuit]


def register(app: Flask, state: SignupState, registry: t.Any = None) -> None:
    """See :meth:`KeenSignup.register_metrics`."""
    if not enabled(app):
        raise ConfigurationError("KEEN_SIGNUP_METRICS is False: metrics are switched off")
    if not available():
        raise ConfigurationError(
            "Prometheus metrics need prometheus_client: pip install 'flask-keen-signup[metrics]'"
        )
    from prometheus_client import REGISTRY

    start_counting(app)
    target = REGISTRY if registry is None else registry
    with _lock:
        seen = _registered.setdefault(target, set())
        if id(state) in seen:
            return
        target.register(OutboxCollector(state))
        seen.add(id(state))
