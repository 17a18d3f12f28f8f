"""The ledger's statements on every job's path: SQLAlchemy Core against psycopg alone.

Every job costs a worker one claim and one success, and every ``enqueue()`` one INSERT.
On PostgreSQL these run through :meth:`worker.ledger.Database.direct` (the SQL compiled
once, psycopg on a connection of the thread's own); this script times them that way and
the way they ran before, through SQLAlchemy Core on a pooled connection in autocommit
mode (``engine.connect().execution_options(isolation_level="AUTOCOMMIT")``, the same
statements), alternating the two ``--rounds`` times in one process so that the machine's
load touches both alike. Figures: CPU µs (``time.process_time``) and wall µs per job.

No broker is involved. A fresh ``bench_<random>`` database, dropped afterwards. Run from
the repository root::

    .venv/bin/python -m ops.bench.ledger_path --jobs 3000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import insert

from conveyor.worker.ledger import Ledger, NewJob
from conveyor.worker.ledger.statements import CLAIM, SUCCEED, _jobs
from conveyor.worker.migrate import upgrade
from conveyor.worker.models import utcnow
from ops.bench.throughput import create_database, drop_database, log, machine, pg_url


def new_jobs(count: int) -> list[NewJob]:
    return [
        NewJob(
            id=str(uuid.uuid4()), task="bench.job", queue="bench", payload={"n": n}, max_attempts=3
        )
        for n in range(count)
    ]


def timed(step: Callable[[NewJob], None], jobs: list[NewJob]) -> tuple[float, float]:
    """(CPU µs, wall µs) per job of ``step`` over ``jobs``."""
    cpu, wall = time.process_time(), time.perf_counter()
    for job in jobs:
        step(job)
    count = len(jobs)
    return (time.process_time() - cpu) / count * 1e6, (time.perf_counter() - wall) / count * 1e6


def core_claim_and_succeed(ledger: Ledger) -> Callable[[NewJob], None]:
    def step(job: NewJob) -> None:
        now = utcnow()
        params = {
            "b_id": job.id,
            "b_now": now,
            "b_lease": now + timedelta(seconds=60),
            "b_worker": "w",
        }
        with ledger.autocommit() as connection:
            attempts = connection.execute(CLAIM, params).one().attempts
        params = {"b_id": job.id, "b_attempt": attempts, "b_result": None, "b_now": utcnow()}
        with ledger.autocommit() as connection:
            assert connection.execute(SUCCEED, params).first() is not None

    return step


def direct_claim_and_succeed(ledger: Ledger) -> Callable[[NewJob], None]:
    def step(job: NewJob) -> None:
        claim = ledger.claim(job.id, lease_s=60, worker="w", foreign=job)
        assert claim.attempt is not None
        assert ledger.succeed(job.id, claim.attempt, None)

    return step


def core_create(ledger: Ledger) -> Callable[[NewJob], None]:
    def step(job: NewJob) -> None:
        row = ledger._new_row(job)
        with ledger.autocommit() as connection:
            connection.execute(insert(_jobs).values(**row))

    return step


def direct_create(ledger: Ledger) -> Callable[[NewJob], None]:
    def step(job: NewJob) -> None:
        assert ledger.create(job)[1]

    return step


def run(jobs: int, rounds: int) -> dict[str, Any]:
    database = create_database()
    try:
        url = pg_url(database).replace("postgresql://", "postgresql+psycopg://", 1)
        upgrade(url)
        ledger = Ledger(url)
        samples: dict[str, list[tuple[float, float]]] = {}
        ways = {
            "claim + success, SQLAlchemy Core": (core_claim_and_succeed, True),
            "claim + success, direct": (direct_claim_and_succeed, True),
            "create, SQLAlchemy Core": (core_create, False),
            "create, direct": (direct_create, False),
        }
        for warm in (True, False):
            for number in range(1 if warm else rounds):
                for name, (make, needs_rows) in ways.items():
                    batch = new_jobs(200 if warm else jobs)
                    if needs_rows:
                        ledger.create_many(batch)
                    figures = timed(make(ledger), batch)
                    if not warm:
                        samples.setdefault(name, []).append(figures)
                        log(f"round {number + 1} {name}: {figures[0]:.0f} µs CPU per job")
        ledger.dispose()
    finally:
        drop_database(database)
    return {
        "machine": machine(),
        "jobs": jobs,
        "rounds": rounds,
        "figures": {
            name: {
                "cpu_us": statistics.median(cpu for cpu, _ in values),
                "cpu_us_range": [min(c for c, _ in values), max(c for c, _ in values)],
                "wall_us": statistics.median(wall for _, wall in values),
            }
            for name, values in samples.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.jobs, args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("| per job | CPU µs (median, min-max) | wall µs |")
    print("|---|---|---|")
    for name, figures in result["figures"].items():
        low, high = figures["cpu_us_range"]
        cpu, wall = figures["cpu_us"], figures["wall_us"]
        print(f"| {name} | {cpu:.0f} ({low:.0f}-{high:.0f}) | {wall:.0f} |")


if __name__ == "__main__":
    main()
