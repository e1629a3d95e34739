"""Prometheus metrics (DESIGN §9) and the health verdict, against the real emulators.

* The names, the counters and the latency histogram after real logins and deliveries.
* The scrape-time gauges and the verdict following a Keen outage (the emulator down) and
  its recovery, and a dead letter.
* Beside ``prometheus-flask-exporter`` on one app and one registry.
* Without ``prometheus_client``: the package imports and runs; ``register_metrics`` names
  the extra to install.

``tests/system/test_metrics_multiprocess.py`` runs gunicorn with 4 workers in multiprocess mode.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing as t
from pathlib import Path

import _paths
import pytest
import yaml
from _flow import login
from _flow import quickstart_app
from _waits import wait_for
from flask import Flask
from prometheus_client import REGISTRY
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flask_keen_signup import KeenSignup
from flask_keen_signup import signup_state
from flask_keen_signup.metrics import METRIC_NAMES
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

ROOT = Path(_paths.ROOT)


#: DESIGN §9's names without the counter suffix that prometheus_client adds itself.
BASES = {n.removesuffix("_total") for n in METRIC_NAMES}


def base_name(sample_name: str) -> str:
    """The metric a sample belongs to (``x_bucket``, ``x_count``, ``x_total`` -> ``x``)."""
    return re.sub(r"_(total|created|bucket|count|sum)$", "", sample_name)


def scrape(registry: t.Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``registry`` as Prometheus would read it: (name, labels) -> value."""
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def counter(outcome: str) -> float:
    value = REGISTRY.get_sample_value("keen_signup_signups_total", {"outcome": outcome})
    assert value is not None, f"keen_signup_signups_total{{outcome={outcome!r}}} is missing"
    return value


def latency_count() -> float:
    return REGISTRY.get_sample_value("keen_signup_delivery_latency_seconds_count") or 0.0


@pytest.fixture
def apps(tmp_path: Path) -> t.Iterator[t.Callable[..., tuple[Flask, KeenSignup]]]:
    built: list[Flask] = []

    def make(auth0: Auth0Emulator, keen: KeenEmulator, **config: t.Any) -> t.Any:
        app, signup = quickstart_app(auth0, keen, str(tmp_path / f"a{len(built)}.db"), **config)
        built.append(app)
        return app, signup

    yield make
    for app in built:
        signup_state(app).sender.shutdown(timeout=5)


def test_counters_and_latency_after_real_signups(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, signup = apps(keen_signup_auth0, keen_signup_keen)
    registry = CollectorRegistry()
    with app.app_context():
        signup.register_metrics(registry)
        signup.register_metrics(registry)  # idempotent
    before = {o: counter(o) for o in ("recorded", "delivered", "dead", "failed", "spooled")}
    latencies = latency_count()

    for n in range(3):
        login(app.test_client(), keen_signup_auth0, f"u{n}@example.com")
    login(app.test_client(), keen_signup_auth0, "u0@example.com")  # returning: not counted
    assert signup_state(app).sender.flush(timeout=20) == 0
    wait_for(lambda: counter("delivered") - before["delivered"] == 3, 10, "3 delivered")

    assert counter("recorded") - before["recorded"] == 3
    assert counter("dead") == before["dead"] and counter("spooled") == before["spooled"]
    assert latency_count() - latencies == 3
    samples = scrape(registry)
    assert samples[("keen_signup_outbox_events", (("state", "pending"),))] == 0
    assert samples[("keen_signup_outbox_events", (("state", "in_flight"),))] == 0
    assert samples[("keen_signup_outbox_events", (("state", "dead"),))] == 0
    assert samples[("keen_signup_oldest_pending_age_seconds", ())] == 0
    assert samples[("keen_signup_circuit_open", ())] == 0
    # Every exported name is one of DESIGN §9's.
    exported = {name for name, _ in scrape(REGISTRY) if name.startswith("keen_signup_")}
    exported |= {name for name, _ in samples}
    assert {base_name(n) for n in exported} == BASES


def test_gauges_and_verdict_follow_a_keen_outage_and_its_recovery(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, signup = apps(
        keen_signup_auth0,
        keen_signup_keen,
        KEEN_SIGNUP_HEALTH_MAX_PENDING_AGE=1,
        KEEN_SIGNUP_HEALTH_FAILING_PENDING_AGE=3600,
    )
    registry = CollectorRegistry()
    with app.app_context():
        signup.register_metrics(registry)
        assert signup.health()["verdict"] == "ok"
    failed = counter("failed")

    keen_signup_keen.set_down(True)
    for n in range(4):
        login(app.test_client(), keen_signup_auth0, f"down{n}@example.com")

    def gauge(name: str, state: str | None = None) -> float:
        labels = (("state", state),) if state else ()
        return scrape(registry)[(name, labels)]

    wait_for(lambda: gauge("keen_signup_circuit_open") == 1, 60, "the circuit to open")
    undelivered = gauge("keen_signup_outbox_events", "pending") + gauge(
        "keen_signup_outbox_events", "in_flight"
    )
    assert undelivered == 4
    wait_for(
        lambda: gauge("keen_signup_oldest_pending_age_seconds") > 1, 10, "the backlog to age"
    )
    assert counter("failed") > failed
    with app.app_context():
        health = signup.health()
    assert health["verdict"] == "degraded", health
    assert any("circuit" in r for r in health["reasons"]), health["reasons"]
    assert not keen_signup_keen.events("signups")

    keen_signup_keen.set_down(False)
    wait_for(lambda: len(keen_signup_keen.events("signups")) == 4, 90, "the recovery")
    wait_for(lambda: gauge("keen_signup_circuit_open") == 0, 30, "the circuit to close")
    # Keen holds the events before the sender has its answer and marks the rows delivered:
    # until then they are in flight, and the oldest still open has an age.
    wait_for(
        lambda: gauge("keen_signup_outbox_events", "in_flight") == 0, 30, "the rows marked"
    )
    assert gauge("keen_signup_outbox_events", "pending") == 0
    assert gauge("keen_signup_oldest_pending_age_seconds") == 0
    with app.app_context():
        assert signup.health()["verdict"] == "ok"


def test_a_dead_letter_shows_in_gauge_counter_and_verdict(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, signup = apps(keen_signup_auth0, keen_signup_keen)
    registry = CollectorRegistry()
    with app.app_context():
        signup.register_metrics(registry)
    dead = counter("dead")
    keen_signup_keen.fail_events(lambda e: True, error_code="InvalidPropertyNameError", count=1)
    login(app.test_client(), keen_signup_auth0, "doomed@example.com")
    signup_state(app).sender.flush(timeout=20)
    wait_for(lambda: counter("dead") == dead + 1, 10, "the dead counter")
    assert scrape(registry)[("keen_signup_outbox_events", (("state", "dead"),))] == 1
    with app.app_context():
        health = signup.health()
    assert health["verdict"] == "degraded" and health["reasons"] == ["1 dead letter(s)"]


def test_beside_prometheus_flask_exporter(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    from prometheus_flask_exporter import PrometheusMetrics

    app, signup = apps(keen_signup_auth0, keen_signup_keen)
    registry = CollectorRegistry()
    # The exporter's own metrics and ours on one registry, served by its /metrics.
    exporter = PrometheusMetrics(app, registry=registry)
    signup.register_metrics(exporter.registry)  # at start-up, outside a context (DESIGN §9)
    login(app.test_client(), keen_signup_auth0, "flo@example.com")
    signup_state(app).sender.flush(timeout=20)
    page = app.test_client().get("/metrics")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "flask_http_request_duration_seconds_count" in text
    assert 'keen_signup_outbox_events{state="pending"} 0.0' in text
    assert "keen_signup_circuit_open 0.0" in text


def test_an_extension_created_with_its_app_works_outside_a_context(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    """DESIGN §9: at start-up (module level: no app context), ``KeenSignup(app)``'s methods
    need no ``app=``, as Flask-SQLAlchemy's and Flask-Login's don't."""
    from flask import has_app_context

    app, signup = apps(keen_signup_auth0, keen_signup_keen)
    assert not has_app_context()
    registry = CollectorRegistry()
    signup.register_metrics(registry)
    assert signup.health()["verdict"] == "ok"
    login(app.test_client(), keen_signup_auth0, "nocontext@example.com")
    assert signup.flush(timeout=20) == 0
    assert len(keen_signup_keen.events("signups")) == 1
    assert scrape(registry)[("keen_signup_outbox_events", (("state", "pending"),))] == 0
    assert signup.health()["delivered"] == 1


def test_one_extension_on_several_apps_outside_a_context_names_the_argument(
    tmp_path: Path,
) -> None:
    signup = KeenSignup()
    with pytest.raises(RuntimeError, match=r"init_app\(app\)"):
        signup.health()
    made = []
    for name in ("first", "second"):
        app = Flask(name)
        app.config.update(
            KEEN_PROJECT_ID="p",
            KEEN_WRITE_KEY="w",
            KEEN_SIGNUP_DATABASE=str(tmp_path / f"{name}.db"),
            KEEN_SIGNUP_ENABLED=False,
        )
        signup.init_app(app)
        made.append(app)
    first, second = made
    # Two apps and no context: which one? The message says what to pass.
    calls: list[tuple[str, t.Callable[[], object]]] = [
        ("register_metrics(registry, app=app)", lambda: signup.register_metrics(registry)),
        ("flush(app=app)", lambda: signup.flush(timeout=1)),
        ("health(app=app)", signup.health),
    ]
    registry = CollectorRegistry()
    for call, run in calls:
        with pytest.raises(RuntimeError) as info:
            run()
        message = str(info.value)
        assert "2 apps ('first', 'second')" in message and f"signup.{call}" in message
    signup.register_metrics(registry, app=second)
    assert scrape(registry)[("keen_signup_outbox_events", (("state", "pending"),))] == 0
    assert signup.health(app=first)["pending"] == 0
    with second.app_context():  # in a context, the current app
        assert signup.health()["pending"] == 0
        signup.register_metrics(registry)  # the same app's collector again: a no-op
    with pytest.raises(RuntimeError, match=r"signup_state\(app\)"):
        signup_state()


def test_metrics_docs_dashboard_and_alerts_use_the_real_names() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    for name in METRIC_NAMES:
        assert f"`{name}" in doc, name
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    assert len(exprs) >= 5
    used = {base_name(n) for expr in exprs for n in re.findall(r"\bkeen_signup_\w+", expr)}
    assert used == BASES  # every metric on the dashboard, and nothing else
    rules = yaml.safe_load((ROOT / "docs" / "prometheus-alerts.yml").read_text())
    alerts = {r["alert"]: r for group in rules["groups"] for r in group["rules"]}
    assert set(alerts) >= {
        "KeenSignupOldestPendingTooOld",
        "KeenSignupDeadLetters",
        "KeenSignupCircuitOpen",
    }
    for rule in alerts.values():
        names = {base_name(n) for n in re.findall(r"\bkeen_signup_\w+", rule["expr"])}
        assert names and names <= BASES, rule["expr"]
        assert rule["annotations"]["summary"]
    assert alerts["KeenSignupCircuitOpen"]["for"]


def test_without_prometheus_client(tmp_path: Path) -> None:
    """No import at package import; init_app works; register_metrics names the extra."""
    script = f"""
import sys
sys.modules["prometheus_client"] = None  # as if not installed: importing it raises
import flask_keen_signup
from flask import Flask
assert "prometheus_client" not in [m for m in sys.modules if sys.modules[m] is not None]
app = Flask(__name__)
app.config.update(KEEN_PROJECT_ID="p", KEEN_WRITE_KEY="w", KEEN_API_URL="http://127.0.0.1:9",
                  KEEN_SIGNUP_DATABASE={str(tmp_path / "x.db")!r})
signup = flask_keen_signup.KeenSignup(app)
try:
    with app.app_context():
        signup.register_metrics()
except flask_keen_signup.ConfigurationError as exc:
    print("ERROR:", exc)
flask_keen_signup.signup_state(app).sender.shutdown(timeout=2)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "ERROR: Prometheus metrics need prometheus_client" in done.stdout
    assert "flask-keen-signup[metrics]" in done.stdout


def test_a_new_process_counts_what_its_sender_delivers_first(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, tmp_path: Path
) -> None:
    """A gunicorn worker booting (or recycled) with due signups of other processes in the
    outbox: its sender's first pass delivers them at once, and they are counted (counting
    starts before the sender). Multiprocess mode, read back the way gunicorn's scrape does."""
    from prometheus_client.multiprocess import MultiProcessCollector

    database = str(tmp_path / "shared.db")
    app, _ = quickstart_app(keen_signup_auth0, keen_signup_keen, database)
    sender = signup_state(app).sender
    sender.stop(timeout=5)  # another process recorded these, and went away
    for n in range(3):
        login(app.test_client(), keen_signup_auth0, f"earlier{n}@example.com")
    sender.shutdown(timeout=0)
    assert keen_signup_keen.events("signups") == []
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    script = f"""
from flask import Flask
from flask_keen_signup import KeenSignup
app = Flask(__name__)
app.config.update(KEEN_PROJECT_ID={keen_signup_keen.project_id!r},
                  KEEN_WRITE_KEY={keen_signup_keen.write_key!r},
                  KEEN_API_URL={keen_signup_keen.url!r}, KEEN_SIGNUP_DATABASE={database!r})
signup = KeenSignup(app)
assert signup.flush(timeout=20) == 0
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert len(keen_signup_keen.events("signups")) == 3
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiproc))
    samples = scrape(registry)
    assert samples[("keen_signup_signups_total", (("outcome", "delivered"),))] == 3
    assert samples[("keen_signup_delivery_latency_seconds_count", ())] == 3


FORK_WHILE_COUNTING = """
import os, signal, sys, threading
from flask import Flask
from flask_keen_signup import metrics
count = metrics.start_counting(Flask(__name__))
stop = threading.Event()
def sender():  # the preloaded master's sender, counting its deliveries
    while not stop.is_set():
        count("failed", {})
threading.Thread(target=sender, daemon=True).start()
hung = 0
for _ in range(40):
    pid = os.fork()  # gunicorn forking (or recycling) a worker
    if pid == 0:
        signal.alarm(2)  # a worker stuck on a lock it inherited held dies here
        count("recorded", {})  # the worker's first signup
        os._exit(0)
    hung += os.waitpid(pid, 0)[1] != 0
stop.set()
print("hung", hung)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork: POSIX only")
def test_a_worker_forked_while_the_master_counts_can_count(tmp_path: Path) -> None:
    """``gunicorn --preload`` in multiprocess mode: the master's sender counts while
    workers are forked; no worker inherits ``prometheus_client``'s lock held (its first
    signup would wait forever, in a login request)."""
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    done = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", FORK_WHILE_COUNTING],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hung", "0"]


def test_importing_the_package_does_not_import_prometheus_client() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, flask_keen_signup, flask_keen_signup.extension; "
            "print('prometheus_client' in sys.modules)",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "False", done.stderr


def test_switched_off_counts_nothing_and_register_refuses(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    from flask_keen_signup.exceptions import ConfigurationError

    app, signup = apps(keen_signup_auth0, keen_signup_keen, KEEN_SIGNUP_METRICS=False)
    recorded = counter("recorded")
    login(app.test_client(), keen_signup_auth0, "off@example.com")
    assert signup_state(app).sender.flush(timeout=20) == 0
    assert len(keen_signup_keen.events("signups")) == 1
    assert counter("recorded") == recorded
    with app.app_context(), pytest.raises(ConfigurationError, match="KEEN_SIGNUP_METRICS"):
        signup.register_metrics(CollectorRegistry())


def test_a_bad_metrics_switch_fails_at_init_app(tmp_path: Path) -> None:
    from flask_keen_signup.exceptions import ConfigurationError

    app = Flask(__name__)
    app.config.update(
        KEEN_PROJECT_ID="p",
        KEEN_WRITE_KEY="w",
        KEEN_SIGNUP_DATABASE=str(tmp_path / "m.db"),
        KEEN_SIGNUP_METRICS="sometimes",
    )
    with pytest.raises(ConfigurationError, match="KEEN_SIGNUP_METRICS"):
        KeenSignup(app)
    assert "keen_signup" not in app.extensions
