"""Benchmark: what signup attribution and Prometheus metrics cost, against baselines in the
same run.

Run: ``.venv/bin/python bench/attribution_metrics.py [--quick]``

1. **The attribution hook on an ordinary request** (no ``utm_`` parameter, no Referer from
   another host): a whole WSGI request (``app.wsgi_app(environ, start_response)``, the
   response consumed) to three apps built alike, measured in turn (ABC, rotated): a bare
   Flask app, the app with ``KeenSignup`` and ``KEEN_SIGNUP_ATTRIBUTION = False``, and the
   app with it on (the default). Two request shapes: no Referer, and a Referer from the
   app's own host (an in-app navigation). Also the hook alone, called in a tight loop
   inside one request context, and a first touch (a campaign link: the hook parses and
   writes the session) for scale.
2. **Metrics on the login path**: the tracked login callback of ``bench/callback.py``
   (``Bench``: the real ``@signup.track`` hook, a fresh request context per call, the
   view's own time) for a new user, in an app with ``KEEN_SIGNUP_METRICS = False`` and in
   one with metrics on (``prometheus_client``'s counter, incremented by the extension's
   notifier when the signup is recorded), alternated (ABBA) in the same loop. A returning
   user counts nothing: it is measured too, as a check.

Figures are medians of µs per request (per call); "added" = median(variant) -
median(baseline) of the same loop. Exits 0 whenever it ran; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import statistics
import sys
import tempfile
import time
import typing as t

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from callback import Bench  # noqa: E402 - bench/callback.py, beside this script
from callback import keen_in_subprocess  # noqa: E402
from callback import make_token  # noqa: E402
from flask import Flask  # noqa: E402

from flask_keen_signup import KeenSignup  # noqa: E402
from flask_keen_signup import signup_state

HOST = "app.example.com"


def page_app(database: str | None, **config: t.Any) -> Flask:
    """A small app with one page; with ``KeenSignup`` when ``database`` is given."""
    app = Flask(f"page-{id(config)}-{database}")
    app.secret_key = "bench-secret"
    app.config.update(
        KEEN_PROJECT_ID="bench-project",
        KEEN_WRITE_KEY="bench-write-key",
        KEEN_API_URL="http://127.0.0.1:9",
        KEEN_SIGNUP_DATABASE=database or ":unused:",
        **config,
    )

    @app.route("/pricing")
    def pricing() -> str:
        return "<h1>Pricing</h1>"

    if database is not None:
        KeenSignup(app)
    return app


def environ(query: str = "", referer: str | None = None) -> dict[str, t.Any]:
    env: dict[str, t.Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/pricing",
        "QUERY_STRING": query,
        "SERVER_NAME": HOST,
        "SERVER_PORT": "443",
        "HTTP_HOST": HOST,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "203.0.113.7",
        "HTTP_USER_AGENT": "Mozilla/5.0 bench",
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    if referer:
        env["HTTP_REFERER"] = referer
    return env


def start_response(status: str, headers: list[tuple[str, str]], exc: t.Any = None) -> None:
    return None


def request_ns(app: Flask, env: dict[str, t.Any]) -> int:
    started = time.perf_counter_ns()
    body = app.wsgi_app(env, start_response)
    for _ in body:
        pass
    close = getattr(body, "close", None)
    if close is not None:
        close()
    return time.perf_counter_ns() - started


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000


def hook_cost(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bare = page_app(None)
        off = page_app(os.path.join(tmp, "off.db"), KEEN_SIGNUP_ATTRIBUTION=False)
        on = page_app(os.path.join(tmp, "on.db"))
        apps = [("bare Flask app", bare), ("KeenSignup, attribution off", off),
                ("KeenSignup, attribution on", on)]
        shapes = [("no Referer", "", None), ("same-host Referer", "", f"https://{HOST}/docs")]
        print("1. attribution hook on a request without UTM parameters or an external Referer")
        print(f"   whole WSGI request, median of {n} per app (rotated), µs")
        for label, query, referer in shapes:
            samples: dict[str, list[int]] = {name: [] for name, _ in apps}
            for _ in range(200):  # warm-up
                for _, app in apps:
                    request_ns(app, environ(query, referer))
            gc.collect()
            for i in range(n):
                order = apps[i % 3 :] + apps[: i % 3]
                for name, app in order:
                    env = environ(query, referer)
                    samples[name].append(request_ns(app, env))
            base = median_us(samples["bare Flask app"])
            print(f"   {label}:")
            for name, _ in apps:
                m = median_us(samples[name])
                print(f"     {name:<30} {m:7.2f}   added vs bare {m - base:+6.2f}")
            added = median_us(samples["KeenSignup, attribution on"]) - median_us(
                samples["KeenSignup, attribution off"]
            )
            print(f"     the hook (on - off)            {added:+6.2f}")

        # The hook alone, in a tight loop inside one request context.
        hook = signup_state(on).attribution.hook()  # what the app runs
        loops = n * 50
        for label, query, referer in shapes:
            with on.request_context(environ(query, referer)):
                started = time.perf_counter_ns()
                for _ in range(loops):
                    hook()
                per_call = (time.perf_counter_ns() - started) / loops
            print(f"   the hook alone, {label}: {per_call:.0f} ns per call ({loops} calls)")
        # Flask's dispatch of before_request functions plus the hook: preprocess_request().
        for label, query, referer in shapes:
            per: dict[str, float] = {}
            for name, app in (("off", off), ("on", on)):
                with app.request_context(environ(query, referer)):
                    started = time.perf_counter_ns()
                    for _ in range(loops):
                        app.preprocess_request()
                    per[name] = (time.perf_counter_ns() - started) / loops
            print(
                f"   app.preprocess_request(), {label}: {per['off']:.0f} ns (off), "
                f"{per['on']:.0f} ns (on): Flask's dispatch and the hook, "
                f"{per['on'] - per['off']:+.0f} ns"
            )

        # For scale: a first touch (parses the UTM parameters, writes the session cookie).
        campaign = "utm_source=newsletter&utm_medium=email&utm_campaign=launch"
        first: list[int] = []
        plain: list[int] = []
        for _ in range(n // 2):
            first.append(request_ns(on, environ(campaign)))
            plain.append(request_ns(on, environ()))
        print(
            f"   a first touch (campaign link, session written): {median_us(first):.2f} µs "
            f"vs {median_us(plain):.2f} µs for the same app without UTM"
        )


def metrics_cost(keen_url: str, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        off = Bench(keen_url, os.path.join(tmp, "off.db"), KEEN_SIGNUP_METRICS=False)
        print("2. metrics on the login path: the tracked callback's own time, µs (median)")
        counter = iter(range(10**9))

        def new_user(prefix: str) -> dict[str, t.Any]:
            return make_token(f"auth0|{prefix}-{next(counter)}")

        on = Bench(keen_url, os.path.join(tmp, "on.db"))
        from prometheus_client import REGISTRY

        recorded_before = REGISTRY.get_sample_value(
            "keen_signup_signups_total", {"outcome": "recorded"}
        )
        for _ in range(100):
            on.call(on.tracked, new_user("warm-on"))
            off.call(off.tracked, new_user("warm-off"))
        gc.collect()
        samples: dict[str, list[int]] = {"off": [], "on": []}
        for i in range(n):
            pair = [("off", off), ("on", on)]
            if i & 1:
                pair.reverse()
            for name, bench in pair:
                samples[name].append(bench.call(bench.tracked, new_user(name)))
        m_off, m_on = median_us(samples["off"]), median_us(samples["on"])
        rounds = [
            statistics.median(samples["on"][i : i + n // 5])
            - statistics.median(samples["off"][i : i + n // 5])
            for i in range(0, n - n // 5 + 1, n // 5)
        ]
        spread = f"(5 rounds: {min(rounds) / 1000:+.2f} to {max(rounds) / 1000:+.2f})"
        print(f"   new user, metrics off (ABBA):  {m_off:7.2f}")
        added = m_on - m_off
        print(f"   new user, metrics on  (ABBA):  {m_on:7.2f}   added {added:+6.2f} {spread}")
        recorded_after = REGISTRY.get_sample_value(
            "keen_signup_signups_total", {"outcome": "recorded"}
        )
        print(
            f"   (the counter saw {int((recorded_after or 0) - (recorded_before or 0))} "
            "signups recorded by the metrics-on app)"
        )

        token_off, token_on = make_token("auth0|back-off"), make_token("auth0|back-on")
        off.call(off.tracked, token_off)
        on.call(on.tracked, token_on)
        back: dict[str, list[int]] = {"off": [], "on": []}
        for i in range(n):
            pair = [("off", off, token_off), ("on", on, token_on)]
            if i & 1:
                pair.reverse()
            for name, bench, token in pair:
                back[name].append(bench.call(bench.tracked, token))
        b_off, b_on = median_us(back["off"]), median_us(back["on"])
        print(f"   returning user, off / on:      {b_off:7.2f} / {b_on:7.2f}   "
              f"added {b_on - b_off:+6.2f}")
        for bench in (off, on):
            bench.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    n = 1000 if args.quick else 5000
    started = time.monotonic()
    hook_cost(n)
    with keen_in_subprocess() as keen_url:
        metrics_cost(keen_url, n // 2)
    print(f"({time.monotonic() - started:.0f} s; Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
