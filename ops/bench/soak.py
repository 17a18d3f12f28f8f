"""Memory over a long run: N no-op jobs through one ``conveyor worker``, RSS sampled.

The producer enqueues ``--jobs`` no-op jobs (``ops/bench/jobs.py``) as fast as it can
while a ``conveyor worker -c 2`` drains them; every ``--every`` succeeded jobs (read from
the ledger) the resident set size of the worker's main process and of each pool process
is read from ``/proc``. The question it answers: does a worker's memory level off, or
grow with the number of jobs it has run?

    .venv/bin/python -m ops.bench.soak --broker redis --jobs 100000 --every 10000

Cleans up as ``latency.py`` does (``throughput.running_conveyor``): its
``bench_<random>`` database, its queue, Redis database 13 after a Redis run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from ops.bench.throughput import (
    TASK,
    BenchError,
    Worker,
    log,
    machine,
    pg_url,
    running_conveyor,
)


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def children(pid: int) -> list[int]:
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return sorted(int(child) for child in listed)


def produce(app: Any, queue: str, count: int, failed: list[BaseException]) -> None:
    from conveyor.worker.client import enqueue

    try:
        for _ in range(count):
            enqueue(TASK, {}, queue=queue, app=app)
    except BaseException as exc:  # reported by the caller
        failed.append(exc)


def sample(worker: Worker, done: int, began: float) -> dict[str, Any]:
    """RSS of the worker's main process and of each pool process, now."""
    assert worker.proc is not None
    pid = worker.proc.pid
    return {
        "succeeded": done,
        "s": round(time.monotonic() - began, 1),
        "main_kib": rss_kib(pid),
        "pool_kib": [rss_kib(child) for child in children(pid)],
    }


def run(broker: str, jobs: int, every: int, workdir: Path) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    with running_conveyor(broker, "soak", workdir) as bench:
        failed: list[BaseException] = []
        producer = threading.Thread(target=produce, args=(bench.app, bench.queue, jobs, failed))
        producer.start()
        began, next_mark = time.monotonic(), every
        with psycopg.connect(pg_url(bench.database), autocommit=True) as connection:
            while next_mark <= jobs:
                row = connection.execute(
                    "SELECT count(*) FROM conveyor_jobs WHERE state = 'succeeded'"
                ).fetchone()
                done = int(row[0]) if row else 0
                if done >= next_mark:
                    samples.append(sample(bench.worker, done, began))
                    log(f"{broker}: {done} done, {samples[-1]}")
                    next_mark += every
                elif bench.worker.exited() is not None:
                    raise BenchError(f"the worker exited:\n{bench.worker.tail()}")
                elif failed:
                    raise BenchError(f"the producer failed: {failed[0]!r}")
                else:
                    time.sleep(1)
        producer.join()
    return {"broker": broker, "jobs": jobs, "samples": samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench.soak", description=__doc__.split("\n\n", 1)[0]
    )
    parser.add_argument("--broker", choices=["redis", "rabbitmq"], default="redis")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=10_000, help="sample every N jobs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.jobs < 1 or not 1 <= args.every <= args.jobs:
        parser.error("--jobs must be positive and --every between 1 and --jobs")
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-soak-"))
    try:
        result = run(args.broker, args.jobs, args.every, workdir)
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    if args.json:
        print(json.dumps({"machine": machine(), **result}, indent=2))
        return 0
    print("succeeded      s   main MiB   pool MiB (each)")
    for sample in result["samples"]:
        pool = " ".join(f"{kib / 1024:.1f}" for kib in sample["pool_kib"])
        print(
            f"{sample['succeeded']:>9} {sample['s']:>6} {sample['main_kib'] / 1024:>10.1f}   {pool}"
        )
    log(f"worker logs: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
