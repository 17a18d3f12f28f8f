"""Drain N no-op jobs through Conveyor (every guarantee on) and plain Celery, side by side.

For each broker (Redis, RabbitMQ), on the same machine and in one run:

1. **plain Celery** (``ops/bench/plain_app.py``, default settings): publish N messages
   with ``app.send_task`` (timed: the enqueue rate), then start
   ``celery -A ops.bench.plain_app worker -c 2`` and wait until all N have run. The task
   counts itself in Redis and records the time of the first and of the last job.
2. **Conveyor** (``ops/bench/jobs.py``): a fresh PostgreSQL ledger ``bench_<random>``,
   ``conveyor migrate``, N jobs through the real producer path
   (``conveyor.enqueue``: ledger row, then publish; timed), then
   ``conveyor worker -c 2``; done when the ledger counts N ``succeeded`` rows. The first
   and last ``finished_at`` in the ledger give the same two instants as above.

Figures per variant: drain time (worker start to last job done), start-up (worker start
to first job done), jobs/s including start-up (N / drain time) and steady jobs/s
((N - 1) / (last done - first done)). Then, for Conveyor, where the time goes per job:
ledger transactions per job counted by PostgreSQL, and an in-process measurement of the
ledger calls a job makes (mean time and round trips of each).

Run from the repository root: ``.venv/bin/python -m ops.bench.throughput --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from kombu import Connection

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script rather than with -m
    sys.path.insert(0, str(ROOT))

BROKERS = {
    "redis": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"),
    "rabbitmq": os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
}
COUNTER_URL = os.environ.get("BENCH_COUNTER_URL", "redis://127.0.0.1:6379/13")
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres")
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").is_dir() else sys.executable
CELERY = str(Path(PYTHON).with_name("celery"))
CONCURRENCY = 2
TASK = "bench.noop"
STOP_GRACE_S = 30.0
MICRO_ROWS = 1000
TRACE_CALLS = 100

PLAIN = "plain Celery (defaults)"
OPTIONS = "Celery + Conveyor options, no ledger"
CONVEYOR = "Conveyor (all guarantees)"


class BenchError(Exception):
    """A variant could not be measured (did not drain, worker died, service missing)."""


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# -- results ---------------------------------------------------------------------------------


@dataclass
class VariantResult:
    """One variant drained on one broker. Times are wall-clock (``time.time()``)."""

    variant: str
    broker: str
    jobs: int
    enqueue_s: float
    worker_started: float
    first_done: float
    last_done: float
    notes: list[str] = field(default_factory=list)
    ledger: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def enqueue_rate(self) -> float:
        return self.jobs / self.enqueue_s

    @property
    def drain_s(self) -> float:
        return self.last_done - self.worker_started

    @property
    def startup_s(self) -> float:
        return self.first_done - self.worker_started

    @property
    def rate_incl(self) -> float:
        return self.jobs / self.drain_s

    @property
    def rate_steady(self) -> float:
        return (self.jobs - 1) / max(self.last_done - self.first_done, 1e-9)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            enqueue_jobs_per_s=round(self.enqueue_rate, 1),
            drain_s=round(self.drain_s, 3),
            startup_s=round(self.startup_s, 3),
            jobs_per_s_incl_startup=round(self.rate_incl, 1),
            jobs_per_s_steady=round(self.rate_steady, 1),
        )
        return data


# -- processes -------------------------------------------------------------------------------


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any ``CONVEYOR_*``/``BENCH_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "BENCH_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class Worker:
    """A worker started in its own process group, stopped with SIGTERM (SIGKILL after 30 s)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> float:
        log_file = self.log_path.open("wb")
        self.started = time.time()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()
        return self.started

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log(f"worker {proc.pid} still running {STOP_GRACE_S:g}s after SIGTERM: SIGKILL")
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Pool children left behind by a dead main process: same group, which we created.
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.proc = None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


def wait_for(
    what: str,
    done: Callable[[], int],
    target: int,
    *,
    deadline: float,
    every_s: float,
    worker: Worker | None = None,
    on_poll: Callable[[int], None] | None = None,
) -> None:
    """Poll ``done()`` until it reaches ``target``; fail clearly at ``deadline``."""
    last_report = time.monotonic()
    while True:
        count = done()
        if on_poll is not None:
            on_poll(count)
        if count >= target:
            return
        if worker is not None and (code := worker.exited()) is not None:
            raise BenchError(
                f"{what}: the worker exited with code {code} after {count} of {target}; "
                f"log tail:\n{worker.tail()}"
            )
        now = time.monotonic()
        if now > deadline:
            tail = f"; worker log tail:\n{worker.tail()}" if worker is not None else ""
            raise BenchError(f"{what}: only {count} of {target} within the time limit{tail}")
        if now - last_report >= 10:
            log(f"  {what}: {count}/{target}")
            last_report = now
        time.sleep(every_s)


# -- CPU: who burns it, per job ----------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BROKER_SERVERS = {"redis": ("redis-server",), "rabbitmq": ("beam.smp", "erl_child_setup")}
WINDOW = (0.1, 0.9)
"""CPU is measured between these fractions of the jobs done, away from start-up and tail."""


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (state is field 0)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _cpu_s(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuProbe:
    """CPU seconds used by the worker, its ledger sessions and the broker, over a window.

    Snapshots are taken when the jobs done first pass 10 % and 90 % of N, so the figures
    are per job in steady state. The broker server and PostgreSQL are shared with anything
    else running on the machine; on an idle machine the bench is all they serve.
    """

    def __init__(self, worker: Worker, broker: str, jobs: int, database: str | None) -> None:
        self.worker = worker
        self.broker = broker
        self.jobs = jobs
        self.database = database
        self.marks = [int(jobs * f) for f in WINDOW]
        self.snaps: list[tuple[int, dict[str, float]]] = []

    def __call__(self, count: int) -> None:
        if len(self.snaps) < len(self.marks) and count >= self.marks[len(self.snaps)]:
            self.snaps.append((count, self.snapshot()))

    def snapshot(self) -> dict[str, float]:
        group = self.worker.proc.pid if self.worker.proc is not None else -1
        backends = self._backends()
        servers = BROKER_SERVERS[self.broker]
        cpu = {"worker main": 0.0, "worker pool": 0.0, "PostgreSQL": 0.0, "broker": 0.0}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            fields = _stat(pid)
            if fields is None:
                continue
            if pid == group:
                cpu["worker main"] += _cpu_s(fields)
            elif int(fields[2]) == group:
                cpu["worker pool"] += _cpu_s(fields)
            elif pid in backends:
                cpu["PostgreSQL"] += _cpu_s(fields)
            elif _comm(pid) in servers:
                cpu["broker"] += _cpu_s(fields)
        busy, total = _machine_busy()
        cpu["_busy"], cpu["_total"] = busy, total
        return cpu

    def _backends(self) -> set[int]:
        if self.database is None:
            return set()
        with admin() as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = %s AND application_name <> 'bench-poller'",
                (self.database,),
            ).fetchall()
        return {int(row[0]) for row in rows}

    def per_job(self) -> dict[str, float]:
        """CPU milliseconds per job by part, and how busy the machine's CPUs were."""
        if len(self.snaps) < 2:
            return {}
        (c0, s0), (c1, s1) = self.snaps[0], self.snaps[1]
        jobs = max(c1 - c0, 1)
        out = {
            f"{name} ms": 1000 * (s1[name] - s0[name]) / jobs
            for name in s0
            if not name.startswith("_")
        }
        out["total ms"] = sum(out.values())
        span = s1["_total"] - s0["_total"]
        out["machine busy %"] = 100 * (s1["_busy"] - s0["_busy"]) / span if span else 0.0
        return out


# -- broker queues ---------------------------------------------------------------------------


def queue_size(broker_url: str, queue: str) -> int:
    """Messages ready in ``queue`` (0 when it does not exist)."""
    with Connection(broker_url) as conn:
        channel = conn.channel()
        try:
            return int(channel.queue_declare(queue=queue, passive=True).message_count)
        except Exception:
            return 0
        finally:
            with suppress(Exception):
                channel.close()


def delete_queues(broker_url: str, queues: list[str]) -> None:
    """Delete ``queues`` and, on RabbitMQ, the exchanges of the same names Celery made.

    On Redis the keys go directly: kombu deletes a queue's list only through bindings its
    own connection made, and Conveyor's queues (on the default exchange) have none.
    """
    if broker_url.startswith("redis"):
        client = redis.Redis.from_url(broker_url)
        for name in queues:  # kombu keeps priorities 3, 6 and 9 in lists of their own
            client.delete(name, *(f"{name}\x06\x16{p}" for p in (3, 6, 9)))
            client.delete(f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
        client.close()
        return
    with Connection(broker_url) as conn:
        for name in queues:
            channel = conn.channel()
            try:
                channel.queue_delete(queue=name)
                if broker_url.startswith("amqp"):
                    channel.exchange_delete(exchange=name)
            except Exception as exc:  # absent on this broker: nothing to delete
                log(f"  queue {name}: not deleted ({type(exc).__name__})")
            finally:
                with suppress(Exception):
                    channel.close()


# -- PostgreSQL ------------------------------------------------------------------------------


def pg_url(database: str) -> str:
    return PG_URL.rsplit("/", 1)[0] + "/" + database


def admin() -> psycopg.Connection[Any]:
    return psycopg.connect(PG_URL, autocommit=True)


def create_database() -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_stats(name: str, *, settle_s: float = 15.0) -> dict[str, int]:
    """``pg_stat_database`` counters of ``name`` once no session is connected to it.

    A backend flushes its statistics when it exits, so with nobody connected the numbers
    are complete; they are read until two reads agree.
    """
    query = (
        "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_fetched, "
        "(SELECT count(*) FROM pg_stat_activity WHERE datname = %(db)s) AS sessions "
        "FROM pg_stat_database WHERE datname = %(db)s"
    )
    deadline = time.monotonic() + settle_s
    previous: dict[str, int] | None = None
    with admin() as conn:
        while True:
            row = conn.execute(query, {"db": name}).fetchone()
            assert row is not None
            names = ("commits", "rollbacks", "inserted", "updated", "fetched")
            stats = dict(zip(names, row[:5], strict=True))
            if row[5] == 0 and stats == previous:
                return stats
            if time.monotonic() > deadline:
                log(f"  statistics of {name} did not settle; using the last read")
                return stats
            previous = stats
            time.sleep(0.6)


# -- plain Celery ----------------------------------------------------------------------------


def run_plain(
    broker: str, jobs: int, *, timeout_s: float, workdir: Path, conveyor_options: bool = False
) -> VariantResult:
    from ops.bench.plain_app import make_app

    variant = OPTIONS if conveyor_options else PLAIN
    broker_url = BROKERS[broker]
    tag = uuid.uuid4().hex[:8]
    queue = f"bench-{tag}-{'options' if conveyor_options else 'plain'}"
    key = f"bench:{tag}"
    counter = redis.Redis.from_url(COUNTER_URL)
    sender = make_app(broker_url, conveyor_options=conveyor_options)
    worker = Worker(
        [
            CELERY,
            "-A",
            "ops.bench.plain_app",
            "worker",
            "-c",
            str(CONCURRENCY),
            "-P",
            "prefork",
            "-Q",
            queue,
            "-n",
            f"{queue}@%h",
            "--loglevel",
            "WARNING",
        ],
        child_env(
            {
                "BENCH_BROKER_URL": broker_url,
                "BENCH_COUNTER_URL": COUNTER_URL,
                "BENCH_COUNTER_KEY": key,
                "BENCH_TOTAL": str(jobs),
                "BENCH_CONVEYOR_OPTIONS": "1" if conveyor_options else "0",
            }
        ),
        workdir / f"{queue}.log",
    )
    deadline = time.monotonic() + timeout_s
    try:
        log(f"{broker} / {variant}: enqueue {jobs} on {queue}")
        began = time.perf_counter()
        for _ in range(jobs):
            sender.send_task(TASK, kwargs={}, queue=queue)
            if time.monotonic() > deadline:
                raise BenchError(f"{variant}: enqueue did not finish within the time limit")
        enqueue_s = time.perf_counter() - began
        wait_for(
            f"{variant}: messages in {queue}",
            lambda: queue_size(broker_url, queue),
            jobs,
            deadline=deadline,
            every_s=0.2,
        )
        log(f"{broker} / {variant}: start the worker and drain")
        probe = CpuProbe(worker, broker, jobs, None)
        started = worker.start()
        wait_for(
            f"{variant}: jobs done",
            lambda: int(counter.get(f"{key}:count") or 0),
            jobs,
            deadline=deadline,
            every_s=0.2,
            worker=worker,
            on_poll=probe,
        )
        first, last = counter.get(f"{key}:first"), counter.get(f"{key}:last")
        if first is None or last is None:
            raise BenchError(f"{variant}: the first or last job recorded no time")
        worker.stop()
        left = queue_size(broker_url, queue)
        done = int(counter.get(f"{key}:count") or 0)
        if left or done != jobs:
            raise BenchError(f"{variant}: {left} messages left and {done} of {jobs} ran")
    finally:
        worker.stop()
        with suppress(Exception):
            sender.close()
        with suppress(Exception):
            delete_queues(broker_url, [queue])
    notes = ["the task does one Redis INCR per job so the benchmark can count it"]
    if conveyor_options:
        notes.append("Conveyor's Celery options (acks late, prefetch 1, events, confirms)")
    return VariantResult(
        variant=variant,
        broker=broker,
        jobs=jobs,
        enqueue_s=enqueue_s,
        worker_started=started,
        first_done=float(first),
        last_done=float(last),
        notes=notes,
        cpu=probe.per_job(),
    )


# -- Conveyor --------------------------------------------------------------------------------


def conveyor_env(broker_url: str, database: str) -> dict[str, str]:
    return child_env(
        {
            "CONVEYOR_BROKER_URL": broker_url,
            "CONVEYOR_DATABASE_URL": pg_url(database),
            "CONVEYOR_TASK_MODULES": "ops.bench.jobs",
        }
    )


def run_conveyor(
    broker: str,
    jobs: int,
    *,
    database: str,
    timeout_s: float,
    workdir: Path,
    micro: Callable[[Any], dict[str, Any]] | None = None,
) -> VariantResult:
    """Drain ``jobs`` through Conveyor on a migrated, empty ledger ``database``."""
    from conveyor.config import load_settings
    from conveyor.worker.app import create_app
    from conveyor.worker.client import enqueue

    broker_url = BROKERS[broker]
    queue = f"bench-{uuid.uuid4().hex[:8]}-conveyor"
    env = conveyor_env(broker_url, database)
    settings = load_settings(
        broker_url=broker_url, database_url=pg_url(database), task_modules=["ops.bench.jobs"]
    )
    app = create_app(settings)
    worker = Worker(
        [
            PYTHON,
            "-m",
            "conveyor.worker.cli",
            "worker",
            "-Q",
            queue,
            "-c",
            str(CONCURRENCY),
            "-n",
            f"{queue}@%h",
            "--loglevel",
            "WARNING",
        ],
        env,
        workdir / f"{queue}.log",
    )
    deadline = time.monotonic() + timeout_s
    polls = 0
    result: VariantResult
    try:
        log(f"{broker} / {CONVEYOR}: enqueue {jobs} on {queue} (ledger {database})")
        began = time.perf_counter()
        for _ in range(jobs):
            enqueue(TASK, {}, queue=queue, app=app)
            if time.monotonic() > deadline:
                raise BenchError(f"{CONVEYOR}: enqueue did not finish within the time limit")
        enqueue_s = time.perf_counter() - began
        wait_for(
            f"{CONVEYOR}: messages in {queue}",
            lambda: queue_size(broker_url, queue),
            jobs,
            deadline=deadline,
            every_s=0.2,
        )
        app.ledger.dispose()  # its session exits, so the statistics below are complete
        before = database_stats(database)
        log(f"{broker} / {CONVEYOR}: start the worker and drain")
        probe = CpuProbe(worker, broker, jobs, database)
        with psycopg.connect(
            pg_url(database), autocommit=True, application_name="bench-poller"
        ) as poller:

            def succeeded() -> int:
                nonlocal polls
                polls += 1
                row = poller.execute(
                    "SELECT count(*) FROM conveyor_jobs WHERE state = 'succeeded'"
                ).fetchone()
                return int(row[0]) if row else 0

            started = worker.start()
            wait_for(
                f"{CONVEYOR}: jobs succeeded",
                succeeded,
                jobs,
                deadline=deadline,
                every_s=1.0,
                worker=worker,
                on_poll=probe,
            )
        worker.stop()
        after = database_stats(database)
        with psycopg.connect(pg_url(database), autocommit=True) as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM min(finished_at)), extract(epoch FROM max(finished_at)),"
                " count(*) FILTER (WHERE state <> 'succeeded'), count(*) FROM conveyor_jobs"
            ).fetchone()
        assert row is not None
        first, last, unfinished, total = row
        left = queue_size(broker_url, queue)
        if unfinished or total != jobs or left:
            raise BenchError(
                f"{CONVEYOR}: {unfinished} of {total} rows not succeeded, {left} messages left"
            )
        delta = {name: after[name] - before[name] for name in after}
        delta["commits"] -= polls  # the benchmark's own COUNT queries, one transaction each
        result = VariantResult(
            variant=CONVEYOR,
            broker=broker,
            jobs=jobs,
            enqueue_s=enqueue_s,
            worker_started=started,
            first_done=float(first),
            last_done=float(last),
            notes=["done = ledger rows 'succeeded'; times are the rows' finished_at"],
            cpu=probe.per_job(),
            ledger={
                "commits_per_job": delta["commits"] / jobs,
                "rollbacks_per_job": delta["rollbacks"] / jobs,
                "rows_updated_per_job": delta["updated"] / jobs,
                "rows_inserted_per_job": delta["inserted"] / jobs,
            },
        )
        if micro is not None:
            log(f"{broker} / {CONVEYOR}: in-process ledger measurement")
            result.ledger.update(micro(app))
    finally:
        worker.stop()
        with suppress(Exception):
            app.ledger.dispose()
        with suppress(Exception):
            app.close()
        with suppress(Exception):
            delete_queues(broker_url, [queue, f"{queue}.dead"])
    return result


def migrate(broker_url: str, database: str) -> None:
    """``conveyor migrate`` on ``database``, as an operator runs it."""
    done = subprocess.run(
        [PYTHON, "-m", "conveyor.worker.cli", "migrate"],
        cwd=ROOT,
        env=conveyor_env(broker_url, database),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"conveyor migrate failed: {done.stderr.strip() or done.stdout.strip()}")


@dataclass
class Running:
    """A waiting Conveyor worker on a fresh ledger, and a producer app for it."""

    app: Any
    database: str
    queue: str
    worker: Worker


@contextmanager
def running_conveyor(broker: str, purpose: str, workdir: Path) -> Iterator[Running]:
    """A fresh migrated ledger, a ``conveyor worker -c 2`` already consuming a new queue,
    and an app to enqueue with; everything removed afterwards (the queue, its ``.dead``
    queue, the database, and Redis database 13 after a Redis run).

    For the benchmarks that measure a worker while jobs arrive (``latency.py``,
    ``soak.py``); the drain benchmark above starts its worker after the backlog instead.
    """
    from conveyor.config import load_settings
    from conveyor.worker.app import create_app

    broker_url = BROKERS[broker]
    database = create_database()
    queue = f"bench-{uuid.uuid4().hex[:8]}-{purpose}"
    worker = Worker(
        [PYTHON, "-m", "conveyor.worker.cli", "worker", "-Q", queue, "-c", str(CONCURRENCY)],
        conveyor_env(broker_url, database),
        workdir / f"{queue}.log",
    )
    try:
        migrate(broker_url, database)
        settings = load_settings(
            broker_url=broker_url, database_url=pg_url(database), task_modules=["ops.bench.jobs"]
        )
        app = create_app(settings)
        worker.start()
        time.sleep(5)  # the worker is consuming well before the first job
        if worker.exited() is not None:
            raise BenchError(f"the worker exited at start:\n{worker.tail()}")
        yield Running(app, database, queue, worker)
        app.ledger.dispose()
    finally:
        worker.stop()
        delete_queues(broker_url, [queue, f"{queue}.dead"])
        if broker == "redis":  # the benchmarks' own database (13)
            redis.Redis.from_url(broker_url).flushdb()
        drop_database(database)


# -- where the time goes: the ledger calls of one job, measured in-process ---------------------


def ledger_micro(app: Any, rows: int = MICRO_ROWS) -> dict[str, Any]:
    """Mean time of each ledger call a job makes, on ``rows`` fresh rows, then round trips.

    ``create`` is the producer's write, ``claim`` and ``succeed`` (with its transaction)
    the worker's two writes, and ``execute`` the whole attempt as the worker runs it
    (claim, lease heartbeat, run the no-op inside ``ctx.session``, succeed, commit).
    """
    from conveyor.worker.delivery import Delivery
    from conveyor.worker.jobs import spec_for
    from conveyor.worker.ledger import Ledger, NewJob

    ledger = app.ledger
    spec = spec_for(TASK)
    queue = "bench-micro"

    def new(job_id: str) -> NewJob:
        return NewJob(id=job_id, task=TASK, queue=queue, payload={}, max_attempts=5)

    def claim(on: Ledger, job_id: str) -> int:
        lease_s = app.settings.job_lease_s
        attempt = on.claim(job_id, lease_s=lease_s, worker="bench", foreign=new(job_id)).attempt
        assert attempt is not None
        return attempt

    def succeed(on: Ledger, job_id: str, attempt: int) -> None:
        with on.session() as session, session.begin():
            assert on.succeed(job_id, attempt, None, session=session)

    def execute(job_id: str) -> None:
        app.runtime.execute(spec, Delivery(job_id, queue, {}, None, None))

    def timed(call: Callable[[], object]) -> float:
        began = time.perf_counter()
        call()
        return time.perf_counter() - began

    def mean_ms(samples: list[float]) -> float:
        return 1000 * sum(samples) / len(samples)

    # Warm up: pooled connections open, statements prepared.
    for job_id in [str(uuid.uuid4()) for _ in range(20)]:
        ledger.create(new(job_id))
        succeed(ledger, job_id, claim(ledger, job_id))
    ids = [str(uuid.uuid4()) for _ in range(rows)]
    created = [timed(lambda i=i: ledger.create(new(i))) for i in ids]
    attempts: dict[str, int] = {}
    claimed = [timed(lambda i=i: attempts.__setitem__(i, claim(ledger, i))) for i in ids]
    succeeded = [timed(lambda i=i: succeed(ledger, i, attempts[i])) for i in ids]
    more = [str(uuid.uuid4()) for _ in range(rows)]
    for job_id in more:
        ledger.create(new(job_id))
    executed = [timed(lambda i=i: execute(i)) for i in more]
    with psycopg.connect(ledger.url.replace("+psycopg", ""), autocommit=True) as conn:
        pings = [timed(lambda: conn.execute("SELECT 1").fetchone()) for _ in range(rows)]

    trips = _round_trips(Ledger(ledger.url, pool_size=2), new, claim, succeed)
    return {
        "micro_rows": rows,
        "create_ms": mean_ms(created),
        "claim_ms": mean_ms(claimed),
        "succeed_ms": mean_ms(succeeded),
        "execute_ms": mean_ms(executed),
        "select1_ms": mean_ms(pings),
        "round_trips": trips,
    }


@contextmanager
def libpq_trace(ledger: Any) -> Iterator[Callable[[], Any]]:
    """Trace the libpq protocol of every connection ``ledger`` opens, phase by phase."""
    from psycopg import pq
    from sqlalchemy import event

    connections: list[Any] = []
    current: dict[str, Any] = {"file": None}
    flags = pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE

    def attach(raw: Any) -> None:
        if current["file"] is not None and not raw.closed:
            raw.pgconn.trace(current["file"].fileno())
            raw.pgconn.set_trace_flags(flags)

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        connections.append(dbapi_connection)
        attach(dbapi_connection)

    event.listen(ledger.engine, "connect", on_connect)

    @contextmanager
    def phase() -> Iterator[list[str]]:
        out: list[str] = []
        with tempfile.TemporaryFile("w+") as trace_file:
            current["file"] = trace_file
            for raw in connections:
                attach(raw)
            try:
                yield out
            finally:
                for raw in connections:
                    if not raw.closed:
                        raw.pgconn.untrace()  # flushes libpq's buffer into the file
                current["file"] = None
                trace_file.seek(0)
                out.extend(trace_file.read().splitlines())

    yield phase


PARSE = re.compile(r'^F\t\d+\tParse\t "(?P<name>[^"]*)" "(?P<sql>.*?)" \d+')
BIND = re.compile(r'^F\t\d+\tBind\t "[^"]*" "(?P<name>[^"]*)"')
QUERY = re.compile(r'^F\t\d+\tQuery\t "(?P<sql>.*)"')


def _round_trips(
    traced: Any,
    new: Callable[[str], Any],
    claim: Callable[[Any, str], int],
    succeed: Callable[[Any, str, int], None],
) -> dict[str, Any]:
    """Round trips of create, claim and succeed on ``traced``, whose connections libpq traces."""
    attempts: dict[str, int] = {}
    lines: dict[str, list[str]] = {}
    with libpq_trace(traced) as phase:
        with phase() as lines["warm-up"]:  # connect, prepare statements
            for job_id in [str(uuid.uuid4()) for _ in range(10)]:
                traced.create(new(job_id))
                succeed(traced, job_id, claim(traced, job_id))
        ids = [str(uuid.uuid4()) for _ in range(TRACE_CALLS)]
        with phase() as lines["create"]:
            for job_id in ids:
                traced.create(new(job_id))
        with phase() as lines["claim"]:
            for job_id in ids:
                attempts[job_id] = claim(traced, job_id)
        with phase() as lines["succeed"]:
            for job_id in ids:
                succeed(traced, job_id, attempts[job_id])
    traced.dispose()
    prepared: dict[str, str] = {}
    summarise_trace(lines.pop("warm-up"), 1, prepared)
    return {name: summarise_trace(got, TRACE_CALLS, prepared) for name, got in lines.items()}


def statement_label(sql: str) -> str:
    words = sql.replace("\\n", " ").split()
    if not words:
        return "?"
    if words == [";"]:
        return "pre-ping ';'"
    head = words[0].upper()
    if head == "UPDATE" and len(words) > 1:
        return f"UPDATE {words[1]}"
    if head in ("INSERT", "DELETE") and len(words) > 2:
        return f"{head} {words[2]}"
    if head == "SELECT":
        upper = [w.upper() for w in words]
        if "FROM" in upper and upper.index("FROM") + 1 < len(words):
            return f"SELECT FROM {words[upper.index('FROM') + 1]}"
        return " ".join(words[:2])
    return head


def summarise_trace(lines: list[str], calls: int, prepared: dict[str, str]) -> dict[str, Any]:
    """Round trips (one per ``ReadyForQuery``) per call, and what each of them carried.

    ``prepared`` maps prepared statement names to their SQL; it is filled as ``lines``
    declare them, so a later trace can name statements an earlier one prepared.
    """
    cycle: list[str] = []
    kinds: Counter[str] = Counter()
    for line in lines:
        if match := PARSE.match(line):
            if match["name"]:
                prepared[match["name"]] = match["sql"]
            cycle.append(statement_label(match["sql"]))
        elif (match := BIND.match(line)) and match["name"]:
            cycle.append(statement_label(prepared.get(match["name"], "?")))
        elif match := QUERY.match(line):
            cycle.append(statement_label(match["sql"]))
        elif "\tReadyForQuery" in line:
            kinds[" + ".join(dict.fromkeys(cycle)) or "?"] += 1
            cycle = []
    total = sum(kinds.values())
    return {
        "per_call": total / calls,
        "each": {kind: round(count / calls, 2) for kind, count in kinds.items()},
    }


# -- the run ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_1m_before": round(load[0], 2),
    }


def versions() -> dict[str, str]:
    import celery
    import kombu
    import sqlalchemy

    with admin() as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg": psycopg.__version__,
        "postgresql": str(row[0]) if row else "?",
    }


def run_broker(
    broker: str, args: argparse.Namespace, workdir: Path, databases: list[str]
) -> dict[str, Any]:
    broker_url = BROKERS[broker]
    counter = redis.Redis.from_url(COUNTER_URL)
    counter.flushdb()
    load = os.getloadavg()[0]
    results = [run_plain(broker, args.jobs, timeout_s=args.timeout, workdir=workdir)]
    if args.attribution:
        counter.flushdb()
        results.append(
            run_plain(
                broker, args.jobs, timeout_s=args.timeout, workdir=workdir, conveyor_options=True
            )
        )
    counter.flushdb()
    database = create_database()
    databases.append(database)
    migrate(broker_url, database)
    results.append(
        run_conveyor(
            broker,
            args.jobs,
            database=database,
            timeout_s=args.timeout,
            workdir=workdir,
            micro=None if args.no_micro else ledger_micro,
        )
    )
    counter.flushdb()
    plain = results[0]
    conveyor = results[-1]
    return {
        "broker": broker,
        "broker_url": broker_url.split("@")[-1],
        "database": database,
        "load_avg_1m_before": round(load, 2),
        "variants": [r.as_dict() for r in results],
        "ratio_steady": conveyor.rate_steady / plain.rate_steady,
        "ratio_incl_startup": conveyor.rate_incl / plain.rate_incl,
        "_results": results,
    }


def render(report: dict[str, Any]) -> str:
    out: list[str] = []
    info = report["machine"]
    out.append(
        f"Conveyor vs plain Celery: {report['jobs']} no-op jobs, {CONCURRENCY} prefork worker "
        f"processes, {info['date']}, {info['host']} ({info['cpus']} CPUs), "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    )
    head = (
        f"{'variant':<38}{'N':>7}{'enqueue/s':>11}{'start-up s':>12}{'drain s':>9}"
        f"{'jobs/s incl.':>14}{'jobs/s steady':>15}"
    )
    for section in report["brokers"]:
        out.append("")
        out.append(
            f"== {section['broker']} ({section['broker_url']}), load average before "
            f"{section['load_avg_1m_before']}"
        )
        out.append(head)
        out.append("-" * len(head))
        for r in section["_results"]:
            out.append(
                f"{r.variant:<38}{r.jobs:>7}{r.enqueue_rate:>11.0f}{r.startup_s:>12.2f}"
                f"{r.drain_s:>9.2f}{r.rate_incl:>14.0f}{r.rate_steady:>15.0f}"
            )
        out.append(
            f"Conveyor / plain: {section['ratio_steady']:.2f} steady, "
            f"{section['ratio_incl_startup']:.2f} including start-up"
        )
        if all(r.cpu for r in section["_results"]):
            parts = [k for k in section["_results"][0].cpu if k.endswith(" ms")]
            out.append(
                f"CPU ms per job, {WINDOW[0]:.0%}-{WINDOW[1]:.0%} of the drain: "
                + "".join(f"{p.removesuffix(' ms'):>13}" for p in parts)
                + f"{'CPUs busy':>11}"
            )
            for r in section["_results"]:
                out.append(
                    f"  {r.variant:<36}"
                    + "".join(f"{r.cpu[p]:>13.2f}" for p in parts)
                    + f"{r.cpu['machine busy %']:>10.0f}%"
                )
    out.append("")
    out.append("Notes: drain = worker start to last job done; start-up = worker start to first")
    out.append("job done; steady = (N-1) / (last done - first done). The plain task does one")
    out.append("Redis INCR per job so it can be counted (Conveyor's jobs are counted in the")
    out.append("ledger instead). Enqueue is single-threaded, one job per call, before the worker.")
    out.append("")
    out.append("== where the time goes per Conveyor job")
    for section in report["brokers"]:
        r = section["_results"][-1]
        ledger = r.ledger
        if not ledger:
            continue
        plain = section["_results"][0]
        per_proc_plain = 1000 * CONCURRENCY / plain.rate_steady
        per_proc_conv = 1000 * CONCURRENCY / r.rate_steady
        out.append(
            f"{section['broker']}: ledger transactions per job during the drain "
            f"{ledger['commits_per_job']:.2f} commits + {ledger['rollbacks_per_job']:.2f} "
            f"rollbacks, {ledger['rows_updated_per_job']:.2f} row updates "
            f"(pg_stat_database, {r.jobs} jobs)"
        )
        out.append(
            f"  per job per worker process: plain {per_proc_plain:.2f} ms, "
            f"Conveyor {per_proc_conv:.2f} ms (+{per_proc_conv - per_proc_plain:.2f} ms)"
        )
        if "claim_ms" in ledger:
            out.append(
                f"  in-process, mean of {ledger['micro_rows']} calls: create "
                f"{ledger['create_ms']:.2f} ms, claim {ledger['claim_ms']:.2f} ms, succeed "
                f"{ledger['succeed_ms']:.2f} ms, whole attempt (runtime.execute) "
                f"{ledger['execute_ms']:.2f} ms; one SELECT 1 round trip "
                f"{ledger['select1_ms']:.3f} ms"
            )
            for name, trips in ledger["round_trips"].items():
                each = ", ".join(f"{k} x{v:g}" for k, v in trips["each"].items())
                out.append(f"  round trips per {name}: {trips['per_call']:.2f} ({each})")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench.throughput",
        description="Drain N no-op jobs through plain Celery and through Conveyor.",
    )
    parser.add_argument("--broker", choices=["redis", "rabbitmq", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per variant")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the bench_* databases")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds allowed per variant (default 600)"
    )
    parser.add_argument(
        "--attribution",
        action="store_true",
        help="also run plain Celery with Conveyor's Celery options but no ledger",
    )
    parser.add_argument(
        "--no-micro", action="store_true", help="skip the in-process ledger measurement"
    )
    args = parser.parse_args(argv)
    if args.jobs < 2:
        parser.error("--jobs must be at least 2")
    brokers = ["redis", "rabbitmq"] if args.broker == "both" else [args.broker]
    report: dict[str, Any] = {
        "jobs": args.jobs,
        "concurrency": CONCURRENCY,
        "machine": machine(),
        "versions": versions(),
        "brokers": [],
    }
    databases: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    try:
        for broker in brokers:
            report["brokers"].append(run_broker(broker, args, workdir, databases))
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        with suppress(Exception):
            redis.Redis.from_url(COUNTER_URL).flushdb()
        for name in databases:
            if args.keep:
                log(f"kept database {name} ({pg_url(name)})")
            else:
                with suppress(Exception):
                    drop_database(name)
    if args.json:
        for section in report["brokers"]:
            section.pop("_results")
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    log(f"worker logs: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
