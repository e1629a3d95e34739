"""Benchmark: ``flask keen-signup migrate`` on real-tenant sizes.

Run: ``.venv/bin/python bench/migrate.py [--file-users N] [--tenant-users N]``

(a) **A 1,000,000-user file** (NDJSON, gzipped, Auth0's export shape): 95 % created before
    the cutoff, 4 % during the gap, 1 % after it but marked by the Rule. The migration runs
    in a fresh child process through the real CLI command; the figures are its wall time
    and its RSS growth (peak RSS minus RSS just before the command). The floor, measured in
    the same run: reading and normalising the same file without writing anything
    (``--dry-run`` on an empty ledger reads the ledger too, so the floor is the reader).
(b) **A 100,000-user tenant** in the Auth0 emulator (its own process), read through a user
    export job (the tenant is past Auth0's 1,000-user paging limit), migrated the same way.

Aims (issue 8): 1,000,000 users in under 2 minutes, RSS growth under 100 MB, on the 2-core
machine. Exits 0 whenever it ran.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import typing as t

CUTOFF = "2026-11-18T00:00:00Z"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _status(key: str) -> float:
    """VmRSS or VmHWM of this process, in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def write_users_file(path: str, count: int) -> None:
    rng = random.Random(8)
    start = dt.datetime(2019, 1, 1, tzinfo=dt.timezone.utc).timestamp()
    cutoff = dt.datetime(2026, 11, 18, tzinfo=dt.timezone.utc).timestamp()
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as out:
        for n in range(count):
            roll = n % 100
            if roll < 95:
                created = rng.uniform(start, cutoff - 1)
            else:
                created = rng.uniform(cutoff, cutoff + 12 * 86400)
            user: dict[str, t.Any] = {
                "user_id": f"auth0|{n:024x}",
                "created_at": dt.datetime.fromtimestamp(created, dt.timezone.utc).strftime(
                    "%Y-%m-%dT%H:%M:%S.000Z"
                ),
                "name": f"User {n}",
                "email": f"user{n}@example.com",
            }
            if roll == 99:
                user["app_metadata"] = {"signedUp": True}
            out.write(json.dumps(user, separators=(",", ":")) + "\n")


def child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: build the app, run one CLI command, print the figures."""
    from flask import Flask

    from flask_keen_signup import KeenSignup
    from flask_keen_signup import signup_state

    app = Flask("bench_migrate")
    app.config.update(json.loads(args.config))
    KeenSignup(app)
    signup_state(app).sender.stop(timeout=5)  # measure migrate alone
    before = _status("VmRSS")
    started = time.perf_counter()
    result = app.test_cli_runner().invoke(args=json.loads(args.command))
    elapsed = time.perf_counter() - started
    rows = dict(
        (m.group(1), int(m.group(2)))
        for m in re.finditer(r"^([a-z ]+?)\s{2,}(\d+)$", result.output, re.M)
    )
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "rss_growth_mb": _status("VmHWM") - before,
                "exit_code": result.exit_code,
                "rows": rows,
                "output": result.output[-600:],
            }
        )
    )


def run_child(config: dict[str, t.Any], command: list[str]) -> dict[str, t.Any]:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            "--config",
            json.dumps(config),
            "--command",
            json.dumps(command),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise SystemExit(f"child failed: {done.stderr[-2000:]}")
    figures: dict[str, t.Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def floor_read(path: str) -> float:
    """Read and normalise every user of the file, writing nothing: the reader's cost."""
    from flask_keen_signup.migrate_users import user_from_record
    from flask_keen_signup.users_export import iter_users_file

    started = time.perf_counter()
    with iter_users_file(path) as users:
        count = sum(1 for record in users if user_from_record(record, "signedUp"))
    assert count > 0
    return time.perf_counter() - started


def base_config(directory: str, name: str) -> dict[str, t.Any]:
    return {
        "KEEN_PROJECT_ID": "p",
        "KEEN_WRITE_KEY": "w",
        "KEEN_API_URL": "http://127.0.0.1:9",  # nothing is sent: --flush-timeout 0
        "KEEN_SIGNUP_DATABASE": os.path.join(directory, name),
        "KEEN_SIGNUP_SHUTDOWN_TIMEOUT": 0,
    }


def part_a(count: int) -> None:
    print(f"(a) migrate a {count:,}-user file (NDJSON.gz)")
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "users.json.gz")
        started = time.perf_counter()
        write_users_file(path, count)
        print(
            f"    file written: {os.path.getsize(path) / 1e6:.1f} MB gzipped "
            f"in {time.perf_counter() - started:.1f} s"
        )
        floor = floor_read(path)
        figures = run_child(
            base_config(directory, "a.sqlite3"),
            ["keen-signup", "migrate", "--reported-until", CUTOFF, "--users-file", path,
             "--flush-timeout", "0"],
        )
        report(figures, count, floor)
        again = run_child(
            base_config(directory, "a.sqlite3"),
            ["keen-signup", "migrate", "--reported-until", CUTOFF, "--users-file", path,
             "--flush-timeout", "0"],
        )
        print(
            f"    second run: {again['seconds']:.1f} s, rows {again['rows']} "
            "(nothing reported twice)"
        )


_EMULATOR = """
import json, sys, threading
from flask_keen_signup import signup_state
from flask_keen_signup.testing import Auth0Emulator
auth0 = Auth0Emulator(client_id="c", client_secret="s").start()
auth0.load_users({count}, created_from="2019-01-01T00:00:00Z",
                 created_to="2026-11-30T00:00:00Z", marked=0.01, seed=1)
print(json.dumps({{"url": auth0.url, "id": auth0.m2m_client_id,
                  "secret": auth0.m2m_client_secret}}), flush=True)
sys.stdin.read()
auth0.stop()
"""


@contextlib.contextmanager
def auth0_emulator(count: int) -> t.Iterator[dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _EMULATOR.format(count=count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the emulator's request log
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("the Auth0 emulator did not start")
        yield json.loads(line)
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def part_b(count: int) -> None:
    print(f"(b) migrate a {count:,}-user tenant through a user export job")
    started = time.perf_counter()
    with auth0_emulator(count) as auth0, tempfile.TemporaryDirectory() as directory:
        print(f"    tenant loaded in {time.perf_counter() - started:.1f} s")
        config = {
            **base_config(directory, "b.sqlite3"),
            "KEEN_SIGNUP_AUTH0_DOMAIN": auth0["url"],
            "KEEN_SIGNUP_AUTH0_CLIENT_ID": auth0["id"],
            "KEEN_SIGNUP_AUTH0_CLIENT_SECRET": auth0["secret"],
            "KEEN_SIGNUP_AUTH0_REQUESTS_PER_SECOND": 2,
        }
        figures = run_child(
            config,
            ["keen-signup", "migrate", "--reported-until", CUTOFF, "--flush-timeout", "0"],
        )
        report(figures, count, None, aims=False)
        print("    (includes the export job's polling: the client polls every 2 s)")


def report(
    figures: dict[str, t.Any], count: int, floor: float | None, *, aims: bool = True
) -> None:
    if figures["exit_code"] != 0:
        print(f"    FAILED (exit {figures['exit_code']}): {figures['output']}")
        return
    seconds, growth = figures["seconds"], figures["rss_growth_mb"]
    print(f"    rows: {figures['rows']}")
    print(f"    migrate: {seconds:.1f} s = {count / seconds:,.0f} users/s")
    if floor is not None:
        print(f"    reader alone (same file, same run): {floor:.1f} s; migrate/reader = "
              f"{seconds / floor:.2f}x")
    print(f"    RSS growth: {growth:.1f} MB")
    if not aims:
        return
    per_million = seconds * 1_000_000 / count
    print(
        f"    aims: 1,000,000 users < 120 s -> {per_million:.0f} s per million "
        f"({'met' if per_million < 120 else 'NOT met'}); RSS growth < 100 MB -> "
        f"{'met' if growth < 100 else 'NOT met'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file-users", type=int, default=1_000_000)
    parser.add_argument("--tenant-users", type=int, default=100_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--command", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.file_users:
        part_a(args.file_users)
    if args.tenant_users:
        part_b(args.tenant_users)
    return 0


if __name__ == "__main__":
    sys.exit(main())
