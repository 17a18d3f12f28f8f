"""``conveyor bench``: one run, one machine, one broker at a time, three systems side by side.

For each broker, job kind and repetition, each system in turn (interleaved, so that a
change in the machine's load touches all three alike):

1. **enqueue**: ``enqueue_jobs`` jobs one call at a time from one producer (plain Celery's
   ``send_task`` loop, Dramatiq's ``broker.enqueue``, Conveyor's ``enqueue``: ledger row,
   then the confirmed publish); then the rest of the backlog, which for Conveyor is its
   bulk figure (``enqueue_many``, 500 per call). Jobs/s of each.
2. **drain**: the worker starts on the backlog of ``jobs`` jobs; jobs/s from the first
   job's start to the last job's end (start-up excluded, reported apart), the worker's
   peak RSS (its whole process tree), and its CPU per job, sampled between 10 % and 90 %
   of the jobs (for Conveyor also the ledger's PostgreSQL backends, apart).
3. **latency**: with the worker idle, ``latency_jobs`` jobs sent one by one at ``rate``
   jobs/s; each job records how long after it was sent it started: p50, p95, p99.

Every system runs the same job body (:mod:`worker.bench.probe`): wait ``io_ms`` (0 for
the no-op job), then count itself in Redis. The workers: ``celery worker -c N`` (prefork,
Celery's defaults), ``conveyor worker -c N`` (a fresh migrated PostgreSQL ledger per run,
every promise on), ``dramatiq --processes N`` (its default 8 threads per process).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis

from conveyor.worker.bench.report import summarise
from conveyor.worker.bench.systems import (
    FACTORIES,
    LABELS,
    BenchError,
    Options,
    System,
    Worker,
    log,
    usage,
)

__all__ = ["BenchError", "Options", "run"]

KINDS = {"noop": 0.0, "io5ms": 0.005}
"""Job kinds: seconds each job waits (on I/O: ``time.sleep``)."""


@dataclass
class Figures:
    """One system's figures in one repetition."""

    broker: str
    kind: str
    system: str
    repetition: int
    queue: str
    enqueue_single: float
    enqueue_bulk: float | None
    drain: float
    startup_s: float
    peak_rss_mib: float
    cpu_us_per_job: float
    ledger_cpu_us_per_job: float | None
    wait_ms: dict[str, float] = field(default_factory=dict)


# -- one repetition of one system --------------------------------------------------------------


def measure(
    system: System, *, broker: str, kind: str, repetition: int, client: redis.Redis
) -> Figures:
    """The enqueue, drain and latency figures of ``system`` (see the module's docstring)."""
    options = system.options
    key = f"bench:{uuid.uuid4().hex[:8]}"
    sleep_s = KINDS[kind]
    payload = {"k": key, "n": options.jobs, "s": sleep_s}
    single = min(options.enqueue_jobs, options.jobs)

    began = time.perf_counter()
    for _ in range(single):
        system.send(payload)
    enqueue_single = single / (time.perf_counter() - began)
    rest = [payload] * (options.jobs - single)
    began = time.perf_counter()
    bulk = system.send_many(rest) if rest else False
    if rest and not bulk:
        for item in rest:
            system.send(item)
    enqueue_bulk = len(rest) / (time.perf_counter() - began) if rest and bulk else None

    worker = system.worker(options.workdir / f"{key.replace(':', '-')}-{system.name}.log")
    started = worker.start()
    try:
        drained = _drain(system, worker, key, options)
        wait_ms = _latency(system, worker, key, sleep_s, options, client)
    finally:
        worker.stop()
    first = float(client.get(f"{key}:first") or 0)
    last = float(client.get(f"{key}:last") or 0)
    return Figures(
        broker=broker,
        kind=kind,
        system=system.name,
        repetition=repetition,
        queue=system.queue,
        enqueue_single=enqueue_single,
        enqueue_bulk=enqueue_bulk,
        drain=(options.jobs - 1) / max(last - first, 1e-9),
        startup_s=first - started,
        peak_rss_mib=drained["peak_rss_mib"],
        cpu_us_per_job=drained["cpu_us_per_job"],
        ledger_cpu_us_per_job=drained.get("ledger_cpu_us_per_job"),
        wait_ms=wait_ms,
    )


def _drain(system: System, worker: Worker, key: str, options: Options) -> dict[str, Any]:
    """Wait for the backlog to drain, sampling the worker's tree (and the ledger's)."""
    client = redis.Redis.from_url(options.counter_url)
    deadline = time.monotonic() + options.timeout_s
    samples: list[tuple[int, float, float, float]] = []  # done, worker CPU, ledger CPU, RSS
    peak = 0.0
    while True:
        done = int(client.get(f"{key}:count") or 0)
        cpu, rss = worker.sample()
        ledger_cpu, _ = usage(system.ledger_pids())
        peak = max(peak, rss)
        samples.append((done, cpu, ledger_cpu, rss))
        if done >= options.jobs:
            break
        worker.check()
        if time.monotonic() > deadline:
            raise BenchError(f"{system.name}: {done} of {options.jobs} jobs in the time limit")
        time.sleep(0.2)
    low = [s for s in samples if s[0] >= 0.1 * options.jobs] or samples
    high = [s for s in samples if s[0] <= 0.9 * options.jobs] or samples
    start, end = low[0], high[-1]
    if end[0] <= start[0]:  # too few samples (a tiny run): the whole drain
        start, end = samples[0], samples[-1]
    jobs = max(end[0] - start[0], 1)
    figures: dict[str, Any] = {
        "peak_rss_mib": peak,
        "cpu_us_per_job": (end[1] - start[1]) / jobs * 1e6,
    }
    if system.ledger_pids():
        figures["ledger_cpu_us_per_job"] = (end[2] - start[2]) / jobs * 1e6
    return figures


def _latency(
    system: System,
    worker: Worker,
    key: str,
    sleep_s: float,
    options: Options,
    client: redis.Redis,
) -> dict[str, float]:
    """Send ``latency_jobs`` at ``rate``; percentiles of how long each waited to start."""
    count = options.latency_jobs
    if count <= 0:
        return {}
    phase = f"{key}:latency"
    interval = 1.0 / options.rate
    began = time.perf_counter()
    for index in range(count):
        due = began + index * interval
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        system.send({"k": phase, "n": count, "s": sleep_s, "t": time.time()})
    deadline = time.monotonic() + options.timeout_s
    while int(client.get(f"{phase}:count") or 0) < count:
        worker.check()
        if time.monotonic() > deadline:
            raise BenchError(f"{system.name}: the latency jobs did not all run in time")
        time.sleep(0.1)
    waits = sorted(float(w) * 1000 for w in client.lrange(f"{phase}:wait", 0, -1))
    return {name: percentile(waits, q) for name, q in (("p50", 50), ("p95", 95), ("p99", 99))}


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of sorted ``values`` (nearest rank)."""
    if not values:
        return float("nan")
    rank = max(1, min(len(values), math.ceil(q / 100 * len(values))))
    return values[rank - 1]


# -- the whole run ------------------------------------------------------------------------------


def run(options: Options) -> dict[str, Any]:
    """Every broker, kind, repetition and system; returns the report (also as JSON)."""
    options.workdir.mkdir(parents=True, exist_ok=True)
    figures: list[Figures] = []
    report: dict[str, Any] = {"machine": machine(), "versions": versions(), "options": {}}
    report["options"] = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in asdict(options).items()
        if k != "brokers"
    } | {"brokers": sorted(options.brokers)}
    client = redis.Redis.from_url(options.counter_url)
    for broker, broker_url in options.brokers.items():
        for kind in options.kinds:
            for repetition in range(1, options.repeat + 1):
                for name in options.systems:
                    log(f"{broker} {kind} #{repetition}: {LABELS[name]}")
                    with _system(name, broker_url, options) as system:
                        result = measure(
                            system, broker=broker, kind=kind, repetition=repetition, client=client
                        )
                    figures.append(result)
                    log(f"  drain {result.drain:,.0f}/s, enqueue {result.enqueue_single:,.0f}/s")
    report["runs"] = [asdict(f) for f in figures]
    report["summary"] = summarise(figures)
    return report


@contextmanager
def _system(name: str, broker_url: str, options: Options) -> Iterator[System]:
    queue = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    system = FACTORIES[name](broker_url, queue, options)
    try:
        yield system
    finally:
        system.close()
        client = redis.Redis.from_url(options.counter_url)
        for pattern in ("bench:*", "*bench-*", "dramatiq:*"):
            keys = list(client.scan_iter(pattern))
            if keys:
                client.delete(*keys)
        forget_unacked(client, queue)
        client.close()


def forget_unacked(client: redis.Redis, queue: str) -> None:
    """Drop what kombu still holds unacknowledged for ``queue`` (a worker killed with
    messages in hand leaves them in ``unacked``; the next worker on this database would
    put them back, re-creating the queue)."""
    tags = []
    for tag, value in client.hscan_iter("unacked"):
        with suppress(ValueError, IndexError, TypeError):
            if json.loads(value)[-1] == queue:
                tags.append(tag)
    if tags:
        client.hdel("unacked", *tags)
        client.zrem("unacked_index", *tags)


def machine() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1m_before": round(os.getloadavg()[0], 2),
    }


def versions() -> dict[str, str]:
    found = {}
    for package in ("celery", "kombu", "dramatiq", "redis", "psycopg", "sqlalchemy"):
        with suppress(Exception):
            found[package] = version(package)
    return found
