"""Enqueue-to-start latency of Conveyor at a fixed rate, with a worker already waiting.

One producer thread enqueues no-op jobs (``ops/bench/jobs.py``) through the real producer
path at ``--rate`` jobs per second for ``--seconds``, paced by the clock (not by the
previous call: a slow enqueue is followed by a quicker next one, so the offered rate
holds). A ``conveyor worker -c 2`` runs the whole time. Each job's latency is read from
its ledger row: ``started_at`` (the worker's claim) minus ``created_at`` (set by the
producer just before its INSERT), so it spans the ledger write, the publish, the broker
and the claim. The same machine's clock stamps both.

Run from the repository root, against the development services (see README.md here)::

    .venv/bin/python -m ops.bench.latency --broker rabbitmq --rate 200 --seconds 15
    .venv/bin/python -m ops.bench.latency --broker both --rate 50,100,200,400 --json

It creates a ``bench_<random>`` database per broker (dropped afterwards) and a
``bench-…-latency`` queue (deleted afterwards, with its ``.dead`` queue); Redis database
13, the benchmarks' own, is flushed after each Redis run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from ops.bench.throughput import TASK, BenchError, log, machine, pg_url, running_conveyor

PERCENTILES = (0.50, 0.95, 0.99)


def percentile(sorted_ms: list[float], share: float) -> float:
    """The nearest-rank percentile of an ascending list."""
    index = min(len(sorted_ms) - 1, max(0, round(share * len(sorted_ms)) - 1))
    return sorted_ms[index]


def enqueue_at_rate(app: Any, queue: str, rate: float, seconds: float) -> tuple[int, float]:
    """Enqueue ``rate`` jobs a second for ``seconds``; returns (jobs, offered rate kept)."""
    from conveyor.worker.client import enqueue

    count = int(rate * seconds)
    began = time.perf_counter()
    for n in range(count):
        due = began + n / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        enqueue(TASK, {}, queue=queue, app=app)
    return count, count / (time.perf_counter() - began)


def latencies_ms(database: str, count: int, timeout_s: float) -> list[float]:
    """Each job's started_at - created_at, once all ``count`` have started."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(pg_url(database), autocommit=True) as connection:
        while True:
            rows = connection.execute(
                "SELECT extract(epoch FROM started_at - created_at) * 1000 FROM conveyor_jobs "
                "WHERE started_at IS NOT NULL"
            ).fetchall()
            if len(rows) >= count:
                return sorted(float(row[0]) for row in rows)
            if time.monotonic() > deadline:
                raise BenchError(f"only {len(rows)} of {count} jobs started in {timeout_s:g}s")
            time.sleep(0.5)


def run(broker: str, rate: float, seconds: float, workdir: Path) -> dict[str, Any]:
    with running_conveyor(broker, "latency", workdir) as bench:
        log(f"{broker}: {rate:g} jobs/s for {seconds:g} s on {bench.queue}")
        count, kept = enqueue_at_rate(bench.app, bench.queue, rate, seconds)
        samples = latencies_ms(bench.database, count, timeout_s=max(60.0, 4 * seconds))
    return {
        "broker": broker,
        "rate": rate,
        "offered_rate": round(kept, 1),
        "jobs": count,
        **{f"p{round(p * 100)}_ms": round(percentile(samples, p), 2) for p in PERCENTILES},
        "max_ms": round(samples[-1], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench.latency", description=__doc__.split("\n\n", 1)[0]
    )
    parser.add_argument("--broker", choices=["redis", "rabbitmq", "both"], default="both")
    parser.add_argument("--rate", default="200", help="jobs per second, or a comma list")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long to enqueue")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        rates = [float(rate) for rate in args.rate.split(",")]
    except ValueError:
        parser.error("--rate takes numbers, e.g. 200 or 50,100,200")
    if any(rate <= 0 for rate in rates) or args.seconds <= 0:
        parser.error("--rate and --seconds must be positive")
    brokers = ["redis", "rabbitmq"] if args.broker == "both" else [args.broker]
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-latency-"))
    results = []
    try:
        for broker in brokers:
            for rate in rates:
                results.append(run(broker, rate, args.seconds, workdir))
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    if args.json:
        print(json.dumps({"machine": machine(), "results": results}, indent=2))
        return 0
    print("broker     rate  offered   jobs   p50 ms   p95 ms   p99 ms   max ms")
    for r in results:
        print(
            f"{r['broker']:<9}{r['rate']:>6g}{r['offered_rate']:>9g}{r['jobs']:>7}"
            f"{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['max_ms']:>9.2f}"
        )
    log(f"worker logs: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
