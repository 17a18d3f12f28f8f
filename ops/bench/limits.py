"""What rate and concurrency limits cost on the job path, and which shared counter is cheaper.

Two measurements, in one process, alternating their variants ``--rounds`` times so that the
machine's load touches each alike:

1. **The job path**: one attempt of a job that does nothing, through
   :meth:`~worker.runtime.Runtime.execute` (claim, gate, run, success, the outcome chain),
   for a job with no limit, a rate limit (per key, too high to ever wait), a concurrency
   limit (per key, too high to ever park) and both. Figures: wall and CPU µs per job.
2. **The rate counter**: reserving one slot in the ledger (the upsert Conveyor runs) and
   the same algorithm as a Lua script in Redis (``EVALSHA``), µs per reservation.

No broker traffic: the rows are written first, and only the attempts are timed. Each
round starts on a vacuumed table (``VACUUM ANALYZE``), as autovacuum keeps a live ledger:
without it the concurrency limit's count reads the dead index entries that finished jobs
leave behind until autovacuum visits (in one run it grew from 4.3 to 10 ms a job over
three rounds of 8,000 jobs). A fresh ``bench_<random>`` database, dropped afterwards. Run
from the repository root::

    .venv/bin/python -m ops.bench.limits --jobs 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import redis

from conveyor.config import load_settings
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.delivery import Delivery
from conveyor.worker.jobs import spec_for
from conveyor.worker.ledger import NewJob
from conveyor.worker.migrate import upgrade
from ops.bench.throughput import create_database, drop_database, log, machine, pg_url

REDIS_URL = "redis://127.0.0.1:6379/0"
VARIANTS = {
    "no limit": "bench.noop",
    "rate limit": "bench.rated",
    "concurrency limit": "bench.limited",
    "both limits": "bench.both",
}
GCRA = """
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(ARGV[1]))
redis.call('SET', KEYS[1], tostring(slot + tonumber(ARGV[2])), 'EX', 3600)
return tostring(slot)
"""
"""Conveyor's slot reservation as a Redis script: the slot is max(next, now); next moves
one interval past it."""


def new_jobs(task: str, count: int) -> list[NewJob]:
    key = uuid.uuid4().hex[:8]
    return [
        NewJob(
            id=str(uuid.uuid4()),
            task=task,
            queue="bench",
            payload={"key": f"{key}-{n % 50}"},
            max_attempts=3,
        )
        for n in range(count)
    ]


def timed(step: Callable[[], None], count: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per call of ``step``, called ``count`` times."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        step()
    return (
        (time.perf_counter() - wall) / count * 1e6,
        (time.process_time() - cpu) / count * 1e6,
    )


def job_path(app: ConveyorApp, task: str, count: int) -> tuple[float, float]:
    jobs = new_jobs(task, count)
    app.ledger.create_many(jobs)
    spec, pending = spec_for(task), iter(jobs)

    def attempt() -> None:
        job = next(pending)
        delivery = Delivery(job.id, job.queue, job.payload, None, None)
        app.runtime.execute(spec, delivery)

    return timed(attempt, count)


def ledger_counter(app: ConveyorApp, count: int) -> tuple[float, float]:
    key = f"bench:{uuid.uuid4().hex}"
    return timed(lambda: app.ledger.reserve_rate_slot(key, interval_s=1e-6, now=time.time()), count)


def redis_counter(client: redis.Redis, count: int) -> tuple[float, float]:
    script = client.register_script(GCRA)
    key = f"conveyor-bench:{uuid.uuid4().hex}"
    try:
        return timed(lambda: script(keys=[key], args=[time.time(), 1e-6]), count)
    finally:
        client.delete(key)


def vacuum(database: str) -> None:
    with psycopg.connect(pg_url(database), autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE conveyor_jobs")


def run(jobs: int, rounds: int) -> dict[str, Any]:
    database = create_database()
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with tempfile.TemporaryDirectory() as folder:
            url = pg_url(database).replace("postgresql://", "postgresql+psycopg://", 1)
            upgrade(url)
            settings = load_settings(
                broker_url=REDIS_URL,
                database_url=url,
                data_dir=Path(folder) / "var",
                task_modules=["ops.bench.jobs"],
            )
            app = create_app(settings)
            samples: dict[str, list[tuple[float, float]]] = {}
            ways: dict[str, Callable[[int], tuple[float, float]]] = {
                **{
                    f"job path, {name}": (lambda n, task=task: job_path(app, task, n))
                    for name, task in VARIANTS.items()
                },
                "rate slot, ledger": lambda n: ledger_counter(app, n),
                "rate slot, Redis script": lambda n: redis_counter(client, n),
            }
            for way in ways.values():  # warm up: connections, compiled statements
                way(100)
            for number in range(rounds):
                vacuum(database)
                for name, way in ways.items():
                    figures = way(jobs)
                    samples.setdefault(name, []).append(figures)
                    log(f"round {number + 1} {name}: {figures[0]:.0f} µs per call")
            app.ledger.dispose()
            app.close()
    finally:
        client.close()
        drop_database(database)
    return {
        "machine": machine(),
        "jobs": jobs,
        "rounds": rounds,
        "figures": {
            name: {
                "wall_us": statistics.median(wall for wall, _ in values),
                "wall_us_range": [min(w for w, _ in values), max(w for w, _ in values)],
                "cpu_us": statistics.median(cpu for _, cpu in values),
            }
            for name, values in samples.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="attempts per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    result = run(args.jobs, args.rounds)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
