"""Shared fixtures: real PostgreSQL, Redis and RabbitMQ on loopback, real worker processes.

Nothing here mocks a broker or a database. Each test session gets a fresh PostgreSQL
database (dropped at the end); each test gets queues of its own, so tests never take
each other's messages on the shared brokers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from conveyor.config import load_settings
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.migrate import upgrade
from conveyor.worker.models import JobState
from tests import jobs as test_jobs

PG_ADMIN_URL = os.environ.get(
    "CONVEYOR_TEST_PG_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
AMQP_URL = os.environ.get("CONVEYOR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
BROKERS = {"redis": REDIS_URL, "rabbitmq": AMQP_URL}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _clean_environment() -> None:
    """Tests decide every CONVEYOR_* variable themselves."""
    for name in [name for name in os.environ if name.startswith("CONVEYOR_")]:
        if not name.startswith("CONVEYOR_TEST_"):
            del os.environ[name]


def create_database(prefix: str = "conveyor_test") -> str:
    """A new, empty PostgreSQL database; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


TEST_JOBS = "tests.jobs"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated ledger database on the real PostgreSQL (plus the test jobs' tables)."""
    url = create_database()
    driver_url = url.replace("postgresql://", "postgresql+psycopg://")
    upgrade(driver_url)
    engine = create_engine(driver_url)
    test_jobs.metadata.create_all(engine)
    engine.dispose()
    yield url
    drop_database(url)


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """An unmigrated database, for tests of `conveyor migrate` itself."""
    url = create_database("conveyor_empty")
    yield url
    drop_database(url)


@pytest.fixture(params=sorted(BROKERS))
def broker_url(request: pytest.FixtureRequest) -> str:
    return BROKERS[request.param]


@pytest.fixture
def queue(broker_url: str) -> Iterator[str]:
    """A queue name no other test uses; deleted from the broker afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    with Connection(broker_url) as connection:
        # Declared first: on Redis a fresh connection only deletes the queues it knows of.
        connection.default_channel.queue_declare(name, durable=True, auto_delete=False)
        connection.default_channel.queue_delete(name)


@pytest.fixture
def env(tmp_path: Path, broker_url: str, pg_url: str) -> dict[str, str]:
    """Environment for `conveyor` subprocesses: this test's broker, the session's ledger."""
    return {
        **os.environ,
        "CONVEYOR_BROKER_URL": broker_url,
        "CONVEYOR_DATABASE_URL": pg_url,
        "CONVEYOR_DATA_DIR": str(tmp_path / "var"),
        "CONVEYOR_TASK_MODULES": TEST_JOBS,
    }


@pytest.fixture
def app(broker_url: str, pg_url: str, tmp_path: Path) -> Iterator[ConveyorApp]:
    """An in-process app (producer side) on the same broker and ledger as `env`."""
    settings = load_settings(
        broker_url=broker_url,
        database_url=pg_url,
        data_dir=tmp_path / "var",
        task_modules=[TEST_JOBS],
    )
    built = create_app(settings)
    yield built
    built.ledger.dispose()
    built.close()


def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `conveyor ARGS...` as a real process and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "conveyor.worker.cli", *args],
        env=env,
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


ProcessFactory = Callable[..., subprocess.Popen[bytes]]
WorkerFactory = ProcessFactory


class Processes:
    """Real `conveyor` processes started by a test, each in its own process group."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"{args[0]}-{len(self.started)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "conveyor.worker.cli", *args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
            start_new_session=True,  # so a test can kill the worker and its pool at once
        )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and all its pool processes, as a crash or an OOM kill would."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def start_worker(processes: Processes) -> WorkerFactory:
    """Start a real `conveyor worker` on a queue; stopped (SIGTERM, then KILL) after."""

    def start(
        env: dict[str, str], queue: str, *, concurrency: int = 2, pool: str = "prefork"
    ) -> subprocess.Popen[bytes]:
        args = ["worker", "-Q", queue, "-c", str(concurrency), "--pool", pool]
        return processes.start(env, *args, "--loglevel", "INFO")

    return start


@pytest.fixture
def start_relay(processes: Processes) -> ProcessFactory:
    """Start a real `conveyor relay` (due retries, lease recovery); stopped after."""

    def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
        return processes.start(env, "relay", "--poll", "0.1")

    return start


def wait_for(predicate: Callable[[], Any], *, timeout_s: float = 120, every_s: float = 0.2) -> Any:
    """Poll until ``predicate()`` is truthy; return its value, or fail after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s}s")
        time.sleep(every_s)


def state_of(app: ConveyorApp, job_id: str) -> str | None:
    """The job's state in the ledger, or None while it has no row."""
    job = app.ledger.get(job_id)
    return job.state if job is not None else None


def terminal(app: ConveyorApp, job_id: str) -> str | None:
    """The job's state once it is terminal (for ``wait_for``), else None."""
    state = state_of(app, job_id)
    return state if state is not None and JobState(state).is_terminal else None


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""Prometheus samples by (name, labels)."""


def metric_samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric_value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when the series does not exist (nothing was counted)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
