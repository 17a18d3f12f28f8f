"""Where a Conveyor job's CPU goes, by part: a py-spy profile of a worker and a producer.

**Worker.** A ``conveyor worker -c 2`` on a fresh ledger drains a backlog of no-op jobs
while ``py-spy record`` samples its main process (the consumer) and one pool process (the
jobs) for ``--seconds``. **Producer.** A child process calls ``enqueue()`` in a loop under
``py-spy record``. Each sampled stack is put in the first part whose rule it matches
(:data:`WORKER_PARTS`, :data:`PRODUCER_PARTS`), and each part's samples become µs per
job: samples / rate / jobs done in the window (a pool process runs half the jobs).
py-spy leaves out idle threads, so waiting on the broker is not counted, but a wait on a
socket inside a call (a ledger round trip) is, as the time the job spends on it.

Run from the repository root (py-spy must be installed: ``pip install py-spy``)::

    .venv/bin/python -m ops.bench.profile --broker redis --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from ops.bench.throughput import BROKERS, PYTHON, TASK, log, pg_url, running_conveyor

# A stack belongs to the part of its innermost Conveyor frame (ledger plumbing and type
# conversions count for the call that uses them); a stack with no Conveyor frame is the
# job's own body, or else Celery, kombu, billiard and the rest of Python. The command that
# starts the worker, the consumer and the Redis channel are Conveyor frames around
# Celery's and kombu's loops: they wrap every receive, so they count as Celery's.
PASS_THROUGH = (
    "ledger/database.py",
    "worker/models.py",
    "worker/poison.py",
    "worker/transports.py",
    "worker/cli/",
)
PASS_THROUGH_FUNCTIONS = ("_autocommitted",)
"""Helpers that run a statement for their caller (claim, succeed): counted as the caller."""
WORKER_PARTS = (
    ("claim (ledger)", "ledger/jobs.py", "claim"),
    ("success commit (ledger)", "ledger/jobs.py", "succeed"),
    ("lease heartbeat", "worker/heartbeat.py", None),
    ("metrics", "observability/metrics.py", None),
    ("logs", "observability/logs.py", None),
    ("tracing", "observability/tracing.py", None),
    ("the outcome chain", "worker/outcomes.py", None),
    ("the job's own body", "ops/bench/jobs.py", None),
    ("rest of Conveyor (runtime, poison consumer, probes)", "conveyor/", None),
)
PRODUCER_PARTS = (
    ("ledger insert", "ledger/jobs.py", None),
    ("publish (Celery, kombu, the confirm)", "worker/publish.py", None),
    ("validation (catalog, payload)", "worker/admission.py", None),
    ("validation (catalog, payload)", "worker/catalog.py", None),
    ("metrics, logs (the outcome chain)", "worker/outcomes.py", None),
    ("metrics, logs (the outcome chain)", "worker/observability/metrics.py", None),
    ("tracing (off: the wrapper only)", "observability/tracing.py", None),
    ("enqueue() itself", "worker/client.py", None),
)
OUTSIDE = "Celery, kombu, billiard, Python"
Parts = tuple[tuple[str, str, str | None], ...]


def part_of(stack: str, rules: Parts) -> str:
    """The part of one sampled stack (frames outermost first, ``;``-separated)."""
    for frame in reversed(stack.split(";")):
        function, _, where = frame.partition(" (")
        if any(mark in where for mark in PASS_THROUGH) or function.endswith(PASS_THROUGH_FUNCTIONS):
            continue
        for part, path, name in rules:
            if path in where and (name is None or function.endswith(name)):
                return part
    return OUTSIDE


PRODUCER = """
import sys, time
from conveyor.config import load_settings
from conveyor.worker.app import create_app
from conveyor.worker.client import enqueue
app = create_app(load_settings(broker_url=sys.argv[1], database_url=sys.argv[2],
                               task_modules=["ops.bench.jobs"]))
for _ in range(50):
    enqueue(sys.argv[3], {}, queue=sys.argv[4], app=app)
def measured(count):
    for _ in range(count):
        enqueue(sys.argv[3], {}, queue=sys.argv[4], app=app)
began = time.perf_counter()
count = int(sys.argv[5])
measured(count)
print("ENQUEUED", count, time.perf_counter() - began)
"""


def py_spy() -> str:
    found = Path(PYTHON).with_name("py-spy")
    return str(found) if found.exists() else "py-spy"


def parts_of(raw: Path, rules: Parts, *, within: str | None = None) -> Counter[str]:
    """Samples per part, from py-spy's raw (collapsed) output: ``frames count`` lines;
    with ``within``, only stacks that pass through that frame."""
    parts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit() and (within is None or within in stack):
            parts[part_of(stack, rules)] += int(count)
    return parts


def succeeded(database: str) -> int:
    with psycopg.connect(pg_url(database)) as connection:
        row = connection.execute(
            "SELECT count(*) FROM conveyor_jobs WHERE state = 'succeeded'"
        ).fetchone()
    return int(row[0]) if row else 0


def profile_worker(broker: str, seconds: float, rate: int, workdir: Path) -> dict[str, Any]:
    from conveyor.worker.client import JobRequest, enqueue_many

    with running_conveyor(broker, "profile", workdir) as running:
        backlog = int(seconds * 1000)
        requests = [JobRequest(TASK, {}, queue=running.queue) for _ in range(backlog)]
        for start in range(0, backlog, 500):
            enqueue_many(requests[start : start + 500], app=running.app)
        main = running.worker.proc.pid if running.worker.proc else 0
        pool = [int(p) for p in Path(f"/proc/{main}/task/{main}/children").read_text().split()]
        time.sleep(2)  # past start-up
        before = succeeded(running.database)
        outputs = {name: workdir / f"{name}.txt" for name in ("main", "pool")}
        sampling = ["--rate", str(rate), "--format", "raw", "--nonblocking"]
        spies = [
            subprocess.Popen(
                [
                    *(py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds))),
                    *sampling,
                    *("--output", str(out)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for pid, out in ((main, outputs["main"]), (pool[0], outputs["pool"]))
        ]
        for spy in spies:
            spy.wait(seconds + 60)
        done = succeeded(running.database) - before
    per_process = {"main": done, "pool": done / len(pool)}  # a pool process runs its share
    result: dict[str, Any] = {"jobs": done, "seconds": seconds, "rate": rate}
    for name, out in outputs.items():
        samples = parts_of(out, WORKER_PARTS)
        result[name] = {
            part: count / rate / per_process[name] * 1e6 for part, count in samples.most_common()
        }
    return result


def profile_producer(broker: str, calls: int, rate: int, workdir: Path) -> dict[str, Any]:
    from ops.bench.throughput import create_database, delete_queues, drop_database, migrate

    database = create_database()
    queue = f"bench-producer-{os.getpid()}"
    out = workdir / "producer.txt"
    try:
        migrate(BROKERS[broker], database)
        argv = [PYTHON, "-c", PRODUCER, BROKERS[broker], pg_url(database), TASK, queue]
        spied = subprocess.run(
            [
                *(py_spy(), "record", "--rate", str(rate), "--format", "raw"),
                *("--output", str(out), "--", *argv, str(calls)),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        line = next(line for line in spied.stdout.splitlines() if line.startswith("ENQUEUED"))
        count, elapsed = line.split()[1:]
    finally:
        delete_queues(BROKERS[broker], [queue])
        drop_database(database)
    samples = parts_of(out, PRODUCER_PARTS, within="measured (")
    return {
        "calls": int(count),
        "jobs_s": int(count) / float(elapsed),
        "parts": {p: c / rate / int(count) * 1e6 for p, c in samples.most_common()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["redis", "rabbitmq", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--calls", type=int, default=3000, help="producer calls")
    args = parser.parse_args(argv)
    brokers = ["redis", "rabbitmq"] if args.broker == "both" else [args.broker]
    report = {}
    with tempfile.TemporaryDirectory(prefix="conveyor-profile-") as tmp:
        for broker in brokers:
            log(f"{broker}: worker")
            worker = profile_worker(broker, args.seconds, args.rate, Path(tmp))
            log(f"{broker}: producer")
            producer = profile_producer(broker, args.calls, args.rate, Path(tmp))
            report[broker] = {"worker": worker, "producer": producer}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
