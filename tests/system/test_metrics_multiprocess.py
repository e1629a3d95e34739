"""Metrics under ``gunicorn --preload -w 4`` with ``PROMETHEUS_MULTIPROC_DIR``: the counters
and the latency histogram, kept per process by ``prometheus_client``, add up across workers to
the number of signups recorded and delivered; the outbox gauges are read once per scrape,
never summed over workers. With and without ``--preload``, with ``--max-requests`` recycling
the workers while signups wait for Keen: every outcome still adds up (a worker booting with
due signups counts what its sender delivers first). The app module registers the metrics at
module level, outside an app context. Real servers, real HTTP on 127.0.0.1, one SQLite file.
"""

from __future__ import annotations

import sys
import typing as t
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from test_multiprocess import HTTP_TIMEOUT
from test_multiprocess import Server
from test_multiprocess import app_env
from test_multiprocess import free_port
from test_multiprocess import gunicorn
from test_multiprocess import install_app
from test_multiprocess import keen_user_counts
from test_multiprocess import require_gunicorn
from test_multiprocess import sign_up
from test_multiprocess import stopped_at_exit
from test_multiprocess import wait_for

from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

pytestmark = pytest.mark.slow

SIGNUPS = 24


@pytest.fixture
def auth0() -> t.Iterator[Auth0Emulator]:
    with Auth0Emulator() as emulator:
        yield emulator


@pytest.fixture
def keen() -> t.Iterator[KeenEmulator]:
    with KeenEmulator() as emulator:
        yield emulator


def scrape(url: str) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], list[float]], str]:
    """Every sample of one scrape, (name, labels) -> values (a list: duplicates show), and
    the pid of the worker that answered."""
    response = requests.get(url + "/metrics", timeout=HTTP_TIMEOUT)
    assert response.status_code == 200, response.text[:300]
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples.setdefault(key, []).append(sample.value)
    return samples, response.headers["X-Worker-Pid"]


def one(samples: dict[t.Any, list[float]], name: str, **labels: str) -> float:
    values = samples.get((name, tuple(sorted(labels.items()))), [])
    assert len(values) == 1, f"{name}{labels}: {values}"
    return values[0]


def test_counters_add_up_across_4_workers(
    tmp_path: t.Any, auth0: Auth0Emulator, keen: KeenEmulator
) -> None:
    require_gunicorn()
    install_app(tmp_path)
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = app_env(auth0, keen, str(tmp_path / "keen_signup.sqlite3"))
    env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    emails = [f"mp{n}@example.com" for n in range(SIGNUPS)]
    with stopped_at_exit(gunicorn(tmp_path, env)) as server:
        server.wait_ready()
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda email: sign_up(server.url, email), emails))
        assert [status for status, _, _ in results] == [302] * SIGNUPS
        assert len({pid for _, _, pid in results}) >= 2, "one worker served every callback"
        # A returning user in a new browser: not a signup, not counted.
        assert sign_up(server.url, emails[0])[0] == 302
        wait_for(lambda: len(keen_user_counts(keen)) == SIGNUPS, 60, "every signup in Keen")

        def settled() -> bool:
            samples, _ = scrape(server.url)
            return one(samples, "keen_signup_signups_total", outcome="delivered") == SIGNUPS

        wait_for(settled, 30, "the delivered counter to reach the signups")
        # Several scrapes, answered by different workers, give the same sums. Sequential
        # requests may all land on the one idle worker the kernel prefers, so they go in
        # rounds of 4 at once (a busy worker leaves the next to another), until 2 workers
        # have answered (at most 10 rounds).
        scraped: list[tuple[dict[t.Any, list[float]], str]] = []
        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in range(10):
                scraped += pool.map(lambda _: scrape(server.url), range(4))
                if len({pid for _, pid in scraped}) >= 2:
                    break
        scraped_by = {pid for _, pid in scraped}
        for samples, _ in scraped:
            assert one(samples, "keen_signup_signups_total", outcome="recorded") == SIGNUPS
            assert one(samples, "keen_signup_signups_total", outcome="delivered") == SIGNUPS
            assert one(samples, "keen_signup_signups_total", outcome="dead") == 0
            assert one(samples, "keen_signup_signups_total", outcome="spooled") == 0
            assert one(samples, "keen_signup_delivery_latency_seconds_count") == SIGNUPS
            inf = one(samples, "keen_signup_delivery_latency_seconds_bucket", le="+Inf")
            assert inf == SIGNUPS
            # Gauges: one sample each, from the shared outbox, not a sum over workers.
            assert one(samples, "keen_signup_outbox_events", state="pending") == 0
            assert one(samples, "keen_signup_outbox_events", state="in_flight") == 0
            assert one(samples, "keen_signup_outbox_events", state="dead") == 0
            assert one(samples, "keen_signup_oldest_pending_age_seconds") == 0
            assert one(samples, "keen_signup_circuit_open") == 0
        assert len(scraped_by) >= 2, f"every scrape was answered by one worker: {scraped_by}"

        # Keen down: the backlog shows the same in every worker's scrape.
        keen.set_down(True)
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda n: sign_up(server.url, f"late{n}@example.com"), range(4)))
        for _ in range(6):
            samples, _ = scrape(server.url)
            waiting = one(samples, "keen_signup_outbox_events", state="pending") + one(
                samples, "keen_signup_outbox_events", state="in_flight"
            )
            assert waiting == 4
            assert one(samples, "keen_signup_signups_total", outcome="recorded") == SIGNUPS + 4
        keen.set_down(False)
        wait_for(lambda: len(keen_user_counts(keen)) == SIGNUPS + 4, 90, "the recovery")
        wait_for(
            lambda: (
                one(scrape(server.url)[0], "keen_signup_signups_total", outcome="delivered")
                == SIGNUPS + 4
            ),
            30,
            "the delivered counter after the recovery",
        )
        assert server.terminate(30) == 0


def per_process_outcomes(multiproc: t.Any) -> dict[str, dict[str, float]]:
    """``{pid: {outcome: count}}`` from each process's own counter file, read the way the
    ``MultiProcessCollector`` reads it: who recorded and who delivered what."""
    from prometheus_client.multiprocess import MultiProcessCollector

    found: dict[str, dict[str, float]] = {}
    for path in sorted(multiproc.glob("counter_*.db")):
        pid = path.stem.split("_")[-1]
        for family in MultiProcessCollector.merge([str(path)]):
            for sample in family.samples:
                if sample.name == "keen_signup_signups_total":
                    found.setdefault(pid, {})[sample.labels["outcome"]] = sample.value
    return found


@pytest.mark.parametrize("preload", [False, True], ids=["workers-load-the-app", "preload"])
def test_every_outcome_adds_up_with_workers_recycled_and_deliveries_by_other_processes(
    tmp_path: t.Any, auth0: Auth0Emulator, keen: KeenEmulator, preload: bool
) -> None:
    """4 workers, ``--max-requests`` recycling them while signups wait for Keen (down), so
    the process that delivers a signup is often not the one that recorded it (that one may
    be gone). Once Keen is back and everything is in Keen, every scrape says: recorded ==
    delivered == the signups, no dead, no spooled, the latency histogram counts each
    delivery once. The app module calls ``register_metrics(registry)`` at module level
    (DESIGN §9): every worker must boot with it."""
    require_gunicorn()
    install_app(tmp_path)
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = app_env(auth0, keen, str(tmp_path / "keen_signup.sqlite3"))
    env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-w", "4", "-b", f"127.0.0.1:{port}"]
    argv += ["--max-requests", "5", "--max-requests-jitter", "0", "--graceful-timeout", "10"]
    argv += ["--timeout", "60", "--log-level", "info", "mp_app:app"]
    if preload:
        argv.insert(3, "--preload")
    log = str(tmp_path / "gunicorn.log")
    down, up = 8, 8
    with stopped_at_exit(Server(argv, str(tmp_path), env, port, log)) as server:
        server.wait_ready()
        keen.set_down(True)
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda n: sign_up(server.url, f"d{n}@x.io"), range(down)))
        keen.set_down(False)
        with ThreadPoolExecutor(max_workers=4) as pool:
            results += pool.map(lambda n: sign_up(server.url, f"u{n}@x.io"), range(up))
        assert [status for status, _, _ in results] == [302] * (down + up), server.why()
        signups = down + up
        wait_for(lambda: len(keen_user_counts(keen)) == signups, 90, "every signup in Keen")
        assert max(keen_user_counts(keen).values()) == 1

        def settled() -> bool:
            samples, _ = scrape(server.url)
            return one(samples, "keen_signup_signups_total", outcome="delivered") >= signups

        try:
            wait_for(settled, 30, "the delivered counter to reach the signups")
        except BaseException:
            print("per process:", per_process_outcomes(multiproc), "\n", server.why(400))
            raise
        by_process = per_process_outcomes(multiproc)
        for _ in range(4):  # answered by whichever worker: the same sums
            samples, _ = scrape(server.url)
            for outcome, expected in (("recorded", signups), ("delivered", signups)):
                total = one(samples, "keen_signup_signups_total", outcome=outcome)
                assert total == expected, f"{outcome}: {total} != {expected}; {by_process}"
            assert one(samples, "keen_signup_signups_total", outcome="dead") == 0
            assert one(samples, "keen_signup_signups_total", outcome="spooled") == 0
            assert one(samples, "keen_signup_signups_total", outcome="failed") >= 1
            assert one(samples, "keen_signup_delivery_latency_seconds_count") == signups
            assert one(samples, "keen_signup_outbox_events", state="pending") == 0
        with open(log, encoding="utf-8", errors="replace") as text:
            booted = text.read().count("Booting worker with pid")
        assert booted > 4, f"no worker was recycled by --max-requests: {server.why()}"
        # Some process delivered signups it did not record (its sender took another's).
        assert any(
            counts.get("delivered", 0) != counts.get("recorded", 0)
            for counts in by_process.values()
        ), by_process
        assert server.terminate(30) == 0
