"""Kills, crashes and restarts: jobs are not lost, and effects through ctx.session happen once.

Each test runs on both brokers with the ledger on PostgreSQL and real worker processes.
Recovery times are measured and written to test-artifacts/recovery.jsonl; they are
figures for the benchmark notes, not assertions.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import func, select

from conveyor.config import load_settings
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.client import JobRequest, enqueue, enqueue_many, get_job
from conveyor.worker.ledger import WORKER_LOST
from tests.conftest import (
    ROOT,
    SHORT_LEASE_S,
    TEST_JOBS,
    Processes,
    ProcessFactory,
    WorkerFactory,
    conveyor_env,
    kill_group,
    state_of,
    terminal,
    wait_for,
)
from tests.jobs import counters, effects

pytestmark = pytest.mark.integration

ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
def env(tmp_path: Path, broker_url: str, pg_url: str) -> dict[str, str]:
    """The workers' environment, with a short job lease: most tests here wait for a killed
    worker's lease to run out (one to four times each)."""
    return conveyor_env(broker_url, pg_url, tmp_path, job_lease_s=SHORT_LEASE_S)


def record(figure: dict[str, object]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "recovery.jsonl").open("a") as out:
        out.write(json.dumps(figure) + "\n")


def new_counter(app: ConveyorApp) -> str:
    name = f"c-{uuid.uuid4().hex[:10]}"
    with app.ledger.transaction() as session:
        session.execute(counters.insert().values(name=name, value=0))
    return name


def counter_value(app: ConveyorApp, name: str) -> int:
    with app.ledger.session() as session:
        return int(session.scalar(select(counters.c.value).where(counters.c.name == name)) or 0)


def test_a_killed_workers_job_runs_again_and_its_lost_attempt_counts(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    broker_url: str,
    start_worker: WorkerFactory,
    start_relay: ProcessFactory,
) -> None:
    start_relay(env)
    worker = start_worker(env, queue)
    job_id = enqueue("test.sleep", {"s": 4}, queue=queue, app=app)
    wait_for(lambda: state_of(app, job_id) == "running")
    kill_group(worker)
    killed_at = time.monotonic()

    start_worker(env, queue)
    wait_for(lambda: (get_job(job_id, app=app).attempts or 0) >= 2, timeout_s=60)
    recovery_s = time.monotonic() - killed_at
    assert wait_for(lambda: terminal(app, job_id), timeout_s=60) == "succeeded"

    job = get_job(job_id, app=app)
    assert job.attempts == 2
    assert job.result == 2
    [lost] = app.ledger.attempts(job_id)
    assert (lost.attempt, lost.outcome, lost.error_type) == (1, "lost", WORKER_LOST)
    record({"figure": "sigkill_recovery_s", "broker": broker_url.split(":")[0], "s": recovery_s})


def test_a_job_that_kills_its_worker_every_time_ends_dead(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    start_worker: WorkerFactory,
    start_relay: ProcessFactory,
) -> None:
    start_relay(env)
    start_worker(env, queue)
    job_id = enqueue("test.crash", {}, queue=queue, app=app)
    assert wait_for(lambda: terminal(app, job_id), timeout_s=90) == "dead"
    job = get_job(job_id, app=app)
    assert job.dead_reason == "exhausted"
    assert job.error_type == WORKER_LOST
    assert job.attempts == 2  # two lost attempts; the claim that found them used up is not one
    assert [a.outcome for a in app.ledger.attempts(job_id)] == ["lost", "lost"]


def test_a_delayed_retry_waits_in_the_ledger_and_survives_a_worker_kill(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    start_worker: WorkerFactory,
    start_relay: ProcessFactory,
) -> None:
    worker = start_worker(env, queue)
    job_id = enqueue("test.retry_after", {"delay_s": 3}, queue=queue, app=app)
    wait_for(lambda: state_of(app, job_id) == "scheduled")
    job = get_job(job_id, app=app)
    assert job.run_at is not None
    assert job.run_at > job.updated_at
    kill_group(worker)

    start_worker(env, queue)
    start_relay(env)
    assert wait_for(lambda: terminal(app, job_id), timeout_s=60) == "succeeded"
    job = get_job(job_id, app=app)
    assert (job.attempts, job.result) == (2, 2)
    [retry] = app.ledger.attempts(job_id)
    assert retry.delay_s == 3
    assert job.started_at is not None
    assert (job.started_at - retry.finished_at).total_seconds() >= 3 - 0.05


def skipped(job_id: str, log: Path) -> bool:
    """The worker's log says it dropped a message of ``job_id`` as redundant."""
    lines = log.read_text().splitlines() if log.exists() else []
    return any('"job.skipped"' in line and job_id in line for line in lines)


def test_the_same_message_delivered_twice_runs_once(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    broker_url: str,
    processes: Processes,
    start_worker: WorkerFactory,
) -> None:
    counter = new_counter(app)
    producer = Celery("duplicate", broker=broker_url)
    job_id = str(uuid.uuid4())
    for _ in range(2):
        producer.send_task("test.count", kwargs={"counter": counter}, task_id=job_id, queue=queue)
    start_worker(env, queue)
    log = processes.tmp_path / f"worker-{len(processes.started) - 1}.log"
    assert wait_for(lambda: terminal(app, job_id)) == "succeeded"
    wait_for(lambda: skipped(job_id, log), timeout_s=60)  # the second copy was taken, and dropped
    assert counter_value(app, counter) == 1
    with app.ledger.session() as session:
        runs = session.scalar(
            select(func.count()).select_from(effects).where(effects.c.job_id == job_id)
        )
    assert runs == 1
    producer.close()


def test_effects_are_exactly_once_across_a_worker_sigkill(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    broker_url: str,
    start_worker: WorkerFactory,
    start_relay: ProcessFactory,
) -> None:
    """1,000 jobs each add 1 through ctx.session; the worker is SIGKILLed mid-run.

    The jobs go out in one batch (the producer is not what is under test). The worker that
    finishes them starts once the first one is running, so that it starts up while the
    first works rather than after the kill; both take jobs until the kill.
    """
    counter = new_counter(app)
    start_relay(env)
    worker = start_worker(env, queue)
    request = JobRequest("test.count", {"counter": counter, "sleep_ms": 5}, queue=queue)
    ids = [job.id for job in enqueue_many([request] * 1000, app=app) if job.id is not None]
    assert len(ids) == 1000
    wait_for(lambda: counter_value(app, counter) >= 1, timeout_s=120)  # it is consuming
    start_worker(env, queue)
    wait_for(lambda: counter_value(app, counter) >= 200, timeout_s=120)
    kill_group(worker)

    def all_done() -> bool:
        counts = app.ledger.count_by_state(ids=ids)
        return counts.get("succeeded", 0) == len(ids)

    wait_for(all_done, timeout_s=240, every_s=1.0)
    assert counter_value(app, counter) == 1000
    with app.ledger.session() as session:
        effect_rows = session.scalar(
            select(func.count()).select_from(effects).where(effects.c.job_id.in_(ids))
        )
        rerun = session.scalar(
            select(func.count())
            .select_from(effects)
            .where(effects.c.attempt > 1, effects.c.job_id.in_(ids))
        )
    assert effect_rows == 1000
    record({"figure": "jobs_rerun_after_sigkill", "broker": broker_url.split(":")[0], "n": rerun})


class RedisServer:
    """A Redis of the test's own, with append-only persistence, that the test may restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
                *("--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_for(lambda: self._pings(client), timeout_s=20)

    @staticmethod
    def _pings(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis flushes the append-only file and exits
            self.process.wait(20)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def test_jobs_and_delayed_retries_survive_a_redis_restart(
    own_redis: RedisServer, pg_url: str, tmp_path: Path, processes: Processes
) -> None:
    settings = load_settings(
        broker_url=own_redis.url, database_url=pg_url, task_modules=[TEST_JOBS]
    )
    app = create_app(settings)
    env = {
        **os.environ,
        "CONVEYOR_BROKER_URL": own_redis.url,
        "CONVEYOR_DATABASE_URL": pg_url,
        "CONVEYOR_DATA_DIR": str(tmp_path / "var"),
        "CONVEYOR_RELAY_IN_WORKERS": "false",  # the session ledger: see conveyor_env
        "CONVEYOR_TASK_MODULES": TEST_JOBS,
    }
    processes.start(env, "relay", "--poll", "0.1")
    processes.start(env, "worker", "-Q", "busy", "-c", "2")
    retrying = enqueue("test.retry_after", {"delay_s": 4}, queue="busy", app=app)
    wait_for(lambda: state_of(app, retrying) == "scheduled")
    counter = new_counter(app)
    waiting = [
        enqueue("test.count", {"counter": counter}, queue="idle", app=app) for _ in range(20)
    ]

    own_redis.stop()
    own_redis.start()

    processes.start(env, "worker", "-Q", "idle", "-c", "2")
    assert wait_for(lambda: terminal(app, retrying), timeout_s=90) == "succeeded"
    assert get_job(retrying, app=app).attempts == 2
    wait_for(lambda: app.ledger.count_by_state(ids=waiting).get("succeeded") == 20, timeout_s=90)
    assert counter_value(app, counter) == 20
    app.ledger.dispose()


def test_a_soft_time_limit_is_a_retryable_error(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    start_worker: WorkerFactory,
    start_relay: ProcessFactory,
) -> None:
    start_worker(env, queue)
    start_relay(env)
    job_id = enqueue("test.slow", {"s": 3}, queue=queue, app=app)
    assert wait_for(lambda: terminal(app, job_id), timeout_s=60) == "dead"
    job = get_job(job_id, app=app)
    assert (job.attempts, job.dead_reason) == (2, "exhausted")
    assert job.error_type == "billiard.exceptions.SoftTimeLimitExceeded"
    assert [a.outcome for a in app.ledger.attempts(job_id)] == ["scheduled", "dead"]


def test_a_hard_time_limit_counts_as_an_attempt(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    start_worker: WorkerFactory,
    start_relay: ProcessFactory,
) -> None:
    """A job that ignores its soft limit is killed at the hard one; it cannot loop forever."""
    start_worker(env, queue)
    start_relay(env)
    job_id = enqueue("test.slow", {"s": 30, "stubborn": True}, queue=queue, app=app)
    assert wait_for(lambda: terminal(app, job_id), timeout_s=120) == "dead"
    job = get_job(job_id, app=app)
    assert (job.dead_reason, job.attempts) == ("exhausted", 2)
    assert job.error_type == WORKER_LOST
    assert [a.outcome for a in app.ledger.attempts(job_id)] == ["lost", "lost"]
