"""The producer's side alone: how long one ``enqueue()`` takes, and how it scales by thread.

No worker runs: jobs only go into the ledger and onto the broker. For each broker:

1. **one call at a time**: ``--calls`` ``enqueue()`` calls from one thread, each timed:
   p50, p95, p99 and jobs/s;
2. **threads**: the same number of calls spread over 1 and over ``--threads`` threads of
   one process, sharing one app (its connection pools): jobs/s of each;
3. **bulk**: the same number of jobs through ``enqueue_many``, 500 per call: jobs/s.

A fresh ``bench_<random>`` database per broker and a ``bench-…-producer`` queue, removed
afterwards (Redis database 13 flushed after a Redis run). Run from the repository root::

    .venv/bin/python -m ops.bench.producer --broker both --calls 2000 --threads 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from ops.bench.throughput import (
    BROKERS,
    TASK,
    create_database,
    delete_queues,
    drop_database,
    log,
    machine,
    migrate,
    pg_url,
)


def percentile(sorted_ms: list[float], share: float) -> float:
    index = min(len(sorted_ms) - 1, max(0, round(share * len(sorted_ms)) - 1))
    return sorted_ms[index]


def measure(broker: str, calls: int, threads: int) -> dict[str, Any]:
    from conveyor.config import load_settings
    from conveyor.worker.app import create_app
    from conveyor.worker.client import JobRequest, enqueue, enqueue_many

    broker_url = BROKERS[broker]
    database = create_database()
    queue = f"bench-{uuid.uuid4().hex[:8]}-producer"
    try:
        migrate(broker_url, database)
        app = create_app(
            load_settings(
                broker_url=broker_url,
                database_url=pg_url(database),
                task_modules=["ops.bench.jobs"],
                db_pool_size=threads,
            )
        )
        for _ in range(50):  # connections, declarations, caches
            enqueue(TASK, {}, queue=queue, app=app)

        times_ms = []
        began = time.perf_counter()
        for _ in range(calls):
            start = time.perf_counter()
            enqueue(TASK, {}, queue=queue, app=app)
            times_ms.append((time.perf_counter() - start) * 1000)
        one_thread = calls / (time.perf_counter() - began)
        times_ms.sort()

        def spread(count: int) -> float:
            share = calls // count

            def work(_: int) -> None:
                for _ in range(share):
                    enqueue(TASK, {}, queue=queue, app=app)

            began = time.perf_counter()
            with ThreadPoolExecutor(count) as pool:
                list(pool.map(work, range(count)))
            return share * count / (time.perf_counter() - began)

        rates = {1: spread(1), threads: spread(threads)}
        requests = [JobRequest(TASK, {}, queue=queue) for _ in range(calls)]
        began = time.perf_counter()
        for start in range(0, calls, 500):
            enqueue_many(requests[start : start + 500], app=app)
        bulk = calls / (time.perf_counter() - began)
        app.ledger.dispose()
        return {
            "broker": broker,
            "calls": calls,
            "p50_ms": percentile(times_ms, 0.50),
            "p95_ms": percentile(times_ms, 0.95),
            "p99_ms": percentile(times_ms, 0.99),
            "one_by_one_jobs_s": one_thread,
            "threads": {str(count): rate for count, rate in rates.items()},
            "bulk_jobs_s": bulk,
        }
    finally:
        delete_queues(broker_url, [queue])
        if broker == "redis":
            redis.Redis.from_url(broker_url).flushdb()
        drop_database(database)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["redis", "rabbitmq", "both"], default="both")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    brokers = ["redis", "rabbitmq"] if args.broker == "both" else [args.broker]
    results = []
    for broker in brokers:
        log(f"{broker}: {args.calls} calls")
        results.append(measure(broker, args.calls, args.threads))
    if args.json:
        print(json.dumps({"machine": machine(), "results": results}, indent=2))
        return 0
    head = "| broker | enqueue() p50 / p95 / p99 ms | one by one jobs/s | 1 thread "
    print(f"{head}| {args.threads} threads | enqueue_many jobs/s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['broker']} | {r['p50_ms']:.2f} / {r['p95_ms']:.2f} / {r['p99_ms']:.2f} "
            f"| {r['one_by_one_jobs_s']:,.0f} | {r['threads']['1']:,.0f} "
            f"| {r['threads'][str(args.threads)]:,.0f} | {r['bulk_jobs_s']:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
