"""Benchmark: single writes vs batch writes of the Keen client, against the local emulator.

Run: ``.venv/bin/python bench/keen_client.py [--singles N] [--batch-size B] [--batches K]``

Why it exists: the sender batches because one HTTP round trip per event caps throughput at
what the round trip costs. This measures both paths end to end (encoding, pooled HTTP,
the emulator's validation and storage) on 127.0.0.1 and prints events/s for each, the
batch/single ratio, and the medians over a few repetitions. Against the real Keen the
round trip is tens of milliseconds, so the ratio only grows.

Bounded: the defaults finish in a few seconds; a hard deadline stops early repetitions
if the machine is very slow. Exits 0 whenever it ran.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
import typing as t

from flask_keen_signup.keen import KeenClient
from flask_keen_signup.keen import encode_batch
from flask_keen_signup.testing.keen import KeenEmulator

PROJECT_ID = "bench-project"
WRITE_KEY = "bench-write-key"
DEADLINE_SECONDS = 40.0


def make_events(count: int, offset: int) -> list[dict[str, t.Any]]:
    """Signup-shaped events with distinct uniqueness tokens, as the sender would send."""
    events = []
    for n in range(offset, offset + count):
        sub = f"auth0|bench{n:08d}"
        events.append(
            {
                "userId": sub,
                "name": f"Bench User {n}",
                "ip": "203.0.113.7",
                "connection": "auth0",
                "user_agent": "Mozilla/5.0 (X11; Linux x86_64) bench",
                "keen": {
                    "timestamp": "2026-11-26T10:00:00.000Z",
                    "uniqueness_token": hashlib.sha256(f"signups\n{sub}".encode()).hexdigest(),
                },
            }
        )
    return events


def bench_singles(client: KeenClient, count: int, offset: int) -> float:
    events = make_events(count, offset)
    started = time.perf_counter()
    for event in events:
        client.add_event("signups", event)
    return count / (time.perf_counter() - started)


def bench_batches(client: KeenClient, batch_size: int, batches: int, offset: int) -> float:
    groups = [make_events(batch_size, offset + i * batch_size) for i in range(batches)]
    started = time.perf_counter()
    for group in groups:
        batch = {"signups": group}
        result = client.add_events(batch, body=encode_batch(batch))
        if not result.all_delivered:
            raise SystemExit(f"batch not fully delivered: {result.failed[:3]}")
    return batch_size * batches / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--singles", type=int, default=300, help="sequential add_event calls")
    parser.add_argument("--batch-size", type=int, default=500, help="events per add_events")
    parser.add_argument("--batches", type=int, default=6, help="add_events calls")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (medians shown)")
    args = parser.parse_args(argv)

    deadline = time.monotonic() + DEADLINE_SECONDS
    singles: list[float] = []
    batches: list[float] = []
    with KeenEmulator(project_id=PROJECT_ID, write_key=WRITE_KEY) as keen:
        with KeenClient(PROJECT_ID, WRITE_KEY, api_url=keen.url, timeout=(3.05, 10.0)) as client:
            client.add_events({"signups": make_events(10, 10**7)})  # warm up the pool
            for rep in range(args.repeat):
                keen.reset()
                offset = rep * 10**6
                singles.append(bench_singles(client, args.singles, offset))
                keen.reset()
                batches.append(bench_batches(client, args.batch_size, args.batches, offset))
                print(
                    f"  run {rep + 1}: single {singles[-1]:,.0f} events/s, "
                    f"batch {batches[-1]:,.0f} events/s"
                )
                if time.monotonic() > deadline:
                    print("  (deadline reached, stopping early)")
                    break

    single = statistics.median(singles)
    batch = statistics.median(batches)
    print(f"single writes: {single:,.0f} events/s (median of {len(singles)}, N={args.singles})")
    print(
        f"batch writes:  {batch:,.0f} events/s (median of {len(batches)}, "
        f"{args.batches} x {args.batch_size})"
    )
    print(f"batch/single:  {batch / single:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
