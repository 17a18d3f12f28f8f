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

from config import load_settings
from worker.app import ConveyorApp, create_app
from worker.migrate import upgrade

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


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated ledger database on the real PostgreSQL, for the whole session."""
    url = create_database()
    upgrade(url.replace("postgresql://", "postgresql+psycopg://"))
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
        connection.default_channel.queue_delete(name)


@pytest.fixture
def env(tmp_path: Path, broker_url: str, pg_url: str) -> dict[str, str]:
    """Environment for `conveyor` subprocesses: this test's broker, the session's ledger."""
    return {
        **os.environ,
        "CONVEYOR_BROKER_URL": broker_url,
        "CONVEYOR_DATABASE_URL": pg_url,
        "CONVEYOR_DATA_DIR": str(tmp_path / "var"),
    }


@pytest.fixture
def app(broker_url: str, pg_url: str, tmp_path: Path) -> Iterator[ConveyorApp]:
    """An in-process app (producer side) on the same broker and ledger as `env`."""
    built = create_app(
        load_settings(broker_url=broker_url, database_url=pg_url, data_dir=tmp_path / "var")
    )
    yield built
    built.ledger.dispose()
    built.close()


def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `conveyor ARGS...` as a real process and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=env,
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


WorkerFactory = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start real `conveyor worker` processes; all are stopped (SIGTERM, then KILL) after."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(
        env: dict[str, str], queue: str, *, concurrency: int = 2, pool: str = "prefork"
    ) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker-{len(processes)}.log").open("wb")
        command = [sys.executable, "-m", "worker.cli", "worker", "-Q", queue]
        command += ["-c", str(concurrency), "--pool", pool, "--loglevel", "INFO"]
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(predicate: Callable[[], Any], *, timeout_s: float = 60, every_s: float = 0.2) -> Any:
    """Poll until ``predicate()`` is truthy; return its value, or fail after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s}s")
        time.sleep(every_s)
