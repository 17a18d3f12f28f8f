"""The three systems ``conveyor bench`` compares, and their worker processes.

Each :class:`System` knows how to enqueue one job (and, for Conveyor, many), how to start
its worker on a queue of the run's own, and what to remove afterwards. A
:class:`Worker` runs in its own process group, so that its whole tree (the main process
and every pool process) is sampled for memory and CPU, and stopped together.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from conveyor.worker.bench.probe import COUNTER_URL_ENV

SYSTEMS = ("celery", "conveyor", "dramatiq")
LABELS = {
    "celery": "plain Celery (defaults)",
    "conveyor": "Conveyor (every promise on)",
    "dramatiq": "Dramatiq (defaults)",
}
BULK_BATCH = 500
STOP_GRACE_S = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


class BenchError(Exception):
    """A system could not be measured (it did not drain, its worker died, ...)."""


@dataclass(frozen=True)
class Options:
    """What to run (``conveyor bench --help`` says what each is)."""

    brokers: dict[str, str]
    database_url: str
    counter_url: str
    systems: tuple[str, ...] = SYSTEMS
    kinds: tuple[str, ...] = ("noop",)
    jobs: int = 20_000
    enqueue_jobs: int = 2_000
    latency_jobs: int = 1_000
    rate: float = 200.0
    repeat: int = 3
    concurrency: int = 2
    timeout_s: float = 900.0
    workdir: Path = Path("bench-results")


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# -- processes ---------------------------------------------------------------------------------


class Worker:
    """A worker in its own process group: its tree's RSS and CPU, stopped with SIGTERM."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv, self.env, self.log_path = argv, env, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return time.time()

    def check(self) -> None:
        if self.proc is not None and (code := self.proc.poll()) is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
            raise BenchError(f"{self.argv[0]} exited with {code}:\n{tail}")

    def tree(self) -> list[int]:
        """The worker's process group: its main process and every pool process."""
        if self.proc is None:
            return []
        group = self.proc.pid
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with suppress(OSError, IndexError):
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[2]) == group:  # field 5 of stat: the process group
                        pids.append(int(entry.name))
        return pids

    def sample(self) -> tuple[float, float]:
        """(CPU seconds, RSS MiB) of the whole tree now."""
        return usage(self.tree())

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log(f"  {self.argv[0]} still running {STOP_GRACE_S:g} s after SIGTERM: SIGKILL")
        with suppress(ProcessLookupError):  # pool processes left behind: same group
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.proc = None


def usage(pids: list[int]) -> tuple[float, float]:
    cpu = rss = 0.0
    for pid in pids:
        with suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            rss += int(fields[21]) * PAGE_BYTES / 2**20
    return cpu, rss


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "BENCH_"))}
    return {**env, **extra}


def executable(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


# -- the three systems -------------------------------------------------------------------------


class System:
    """How to enqueue to one system and start its worker, on one broker and queue."""

    name = ""

    def __init__(self, broker_url: str, queue: str, options: Options) -> None:
        self.broker_url, self.queue, self.options = broker_url, queue, options

    def worker(self, log_path: Path) -> Worker:
        raise NotImplementedError

    def send(self, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    def send_many(self, payloads: list[dict[str, Any]]) -> bool:
        """Enqueue in bulk if the system can; False if it has no bulk call."""
        return False

    def ledger_pids(self) -> list[int]:
        return []

    def close(self) -> None:
        """Remove what the run made (queues, databases)."""


class PlainCelery(System):
    name = "celery"

    def __init__(self, broker_url: str, queue: str, options: Options) -> None:
        super().__init__(broker_url, queue, options)
        from celery import Celery

        self.app = Celery("bench_producer", broker=broker_url, set_as_current=False)
        self.app.conf.task_ignore_result = True

    def worker(self, log_path: Path) -> Worker:
        argv = [executable("celery"), "-A", "conveyor.worker.bench.plain", "worker"]
        argv += ["-Q", self.queue, "-c", str(self.options.concurrency), "--loglevel", "WARNING"]
        env = child_env({"BENCH_BROKER_URL": self.broker_url, COUNTER_URL_ENV: counter(self)})
        return Worker(argv, env, log_path)

    def send(self, payload: dict[str, Any]) -> None:
        self.app.send_task("bench.job", kwargs=payload, queue=self.queue)

    def close(self) -> None:
        self.app.close()
        delete_queues(self.broker_url, [self.queue], exchanges=[self.queue])


class Conveyor(System):
    name = "conveyor"

    def __init__(self, broker_url: str, queue: str, options: Options) -> None:
        super().__init__(broker_url, queue, options)
        from conveyor.config import load_settings
        from conveyor.worker.app import create_app
        from conveyor.worker.migrate import upgrade

        self.database = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(options.database_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')
        self.database_url = options.database_url.rsplit("/", 1)[0] + "/" + self.database
        upgrade(self.database_url.replace("postgresql://", "postgresql+psycopg://", 1))
        self.env = child_env(
            {
                "CONVEYOR_BROKER_URL": broker_url,
                "CONVEYOR_DATABASE_URL": self.database_url,
                "CONVEYOR_TASK_MODULES": "conveyor.worker.bench.jobs",
                COUNTER_URL_ENV: options.counter_url,
            }
        )
        settings = load_settings(
            broker_url=broker_url,
            database_url=self.database_url,
            task_modules=["conveyor.worker.bench.jobs"],
        )
        self.app = create_app(settings)

    def worker(self, log_path: Path) -> Worker:
        argv = [executable("conveyor"), "worker", "-Q", self.queue]
        argv += ["-c", str(self.options.concurrency), "--loglevel", "WARNING"]
        return Worker(argv, self.env, log_path)

    def send(self, payload: dict[str, Any]) -> None:
        from conveyor.worker.client import enqueue

        enqueue("bench.job", payload, queue=self.queue, app=self.app)

    def send_many(self, payloads: list[dict[str, Any]]) -> bool:
        from conveyor.worker.client import JobRequest, enqueue_many

        for start in range(0, len(payloads), BULK_BATCH):
            batch = payloads[start : start + BULK_BATCH]
            results = enqueue_many(
                [JobRequest("bench.job", payload, queue=self.queue) for payload in batch],
                app=self.app,
            )
            if any(result.error is not None for result in results):
                raise BenchError(f"enqueue_many refused jobs: {results[0].error}")
        return True

    def ledger_pids(self) -> list[int]:
        with psycopg.connect(self.options.database_url, autocommit=True) as admin:
            rows = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,)
            ).fetchall()
        return [int(row[0]) for row in rows]

    def close(self) -> None:
        self.app.ledger.dispose()
        self.app.close()
        dead = f"{self.queue}.dead"
        delete_queues(self.broker_url, [self.queue, dead], exchanges=[self.queue, dead])
        with psycopg.connect(self.options.database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


class Dramatiq(System):
    name = "dramatiq"

    def __init__(self, broker_url: str, queue: str, options: Options) -> None:
        super().__init__(broker_url, queue, options)
        from conveyor.worker.bench.dramatiq_jobs import make_broker

        self.broker = make_broker(broker_url)

    def worker(self, log_path: Path) -> Worker:
        argv = [executable("dramatiq"), "conveyor.worker.bench.dramatiq_jobs"]
        argv += ["--processes", str(self.options.concurrency), "--queues", self.queue]
        env = child_env(
            {
                "BENCH_BROKER_URL": self.broker_url,
                "BENCH_QUEUE": self.queue,
                COUNTER_URL_ENV: counter(self),
            }
        )
        return Worker(argv, env, log_path)

    def send(self, payload: dict[str, Any]) -> None:
        from dramatiq import Message

        message: Message[Any] = Message(
            queue_name=self.queue, actor_name="bench_job", args=(), kwargs=payload, options={}
        )
        self.broker.enqueue(message)

    def close(self) -> None:
        self.broker.close()
        queues = [self.queue, f"{self.queue}.DQ", f"{self.queue}.XQ"]
        delete_queues(self.broker_url, queues, exchanges=[])


FACTORIES: dict[str, Callable[[str, str, Options], System]] = {
    "celery": PlainCelery,
    "conveyor": Conveyor,
    "dramatiq": Dramatiq,
}


def counter(system: System) -> str:
    return system.options.counter_url


def delete_queues(broker_url: str, queues: list[str], *, exchanges: list[str]) -> None:
    """Delete what a run declared; on Redis the caller flushes the bench database."""
    if not broker_url.startswith("amqp"):
        return
    from kombu.connection import Connection

    with Connection(broker_url) as connection:  # type: ignore[no-untyped-call]
        for name in queues:
            with suppress(Exception):
                connection.channel().queue_delete(queue=name)
        for name in exchanges:
            with suppress(Exception):
                connection.channel().exchange_delete(exchange=name)
