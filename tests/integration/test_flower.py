"""`conveyor flower` as operators run it: a real Flower process watching a real worker.

One worker and one Flower per broker serve the whole module (starting them is the slow
part). Flower must answer only with credentials (`/healthcheck` aside: it says "OK"),
list the worker and the jobs it ran, count their events on `/metrics`, and show queue
lengths with the dead-letter queues. Without credentials,
`conveyor flower` must refuse to start before it connects to anything.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.config import load_settings
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.client import enqueue
from conveyor.worker.constants import dead_letter_queue
from conveyor.worker.models import JobState
from tests.conftest import (
    BROKERS,
    TEST_JOBS,
    Processes,
    delete_queues,
    run_cli,
    state_of,
    wait_for,
)

pytestmark = pytest.mark.integration

USER = "ops"
PASSWORD = "flower-test-secret"
MANAGEMENT_API_URL = os.environ.get(
    "CONVEYOR_TEST_RABBITMQ_API_URL", "http://guest:guest@127.0.0.1:15672/api/"
)
UNREACHABLE_BROKER = "redis://127.0.0.1:9/0"  # nothing listens: the checks must come first


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True, kw_only=True)
class FlowerStack:
    """A worker on its own queue, and `conveyor flower` watching it."""

    broker: str
    base_url: str
    worker: str
    queue: str
    app: ConveyorApp
    flower: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, *, auth: tuple[str, str] | None = (USER, PASSWORD)) -> httpx.Response:
        return httpx.get(f"{self.base_url}{path}", auth=auth, timeout=10)


def flower_env(broker: str, pg_url: str, data_dir: Path, port: int) -> dict[str, str]:
    """What `conveyor flower` and `conveyor worker` get: this broker, the session's ledger."""
    env = {
        **os.environ,
        "CONVEYOR_BROKER_URL": BROKERS[broker],
        "CONVEYOR_DATABASE_URL": pg_url,
        "CONVEYOR_DATA_DIR": str(data_dir),
        "CONVEYOR_TASK_MODULES": TEST_JOBS,
        "CONVEYOR_RELAY_IN_WORKERS": "false",  # the session ledger: see conveyor_env
        "CONVEYOR_FLOWER_USER": USER,
        "CONVEYOR_FLOWER_PASSWORD": PASSWORD,
        "CONVEYOR_FLOWER_PORT": str(port),
    }
    if broker == "rabbitmq":
        env["CONVEYOR_BROKER_API_URL"] = MANAGEMENT_API_URL
    return env


def wait_until_up(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait for Flower's `/healthcheck`; fail with Flower's log if the process died."""

    def up() -> bool:
        if process.poll() is not None:
            pytest.fail(f"conveyor flower exited with {process.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(f"{base_url}/healthcheck", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout_s=60)


@contextmanager
def flower_stack(broker: str, tmp: Path, pg_url: str) -> Iterator[FlowerStack]:
    """Start a worker and `conveyor flower` on ``broker``; stop both and drop the queues."""
    queue = f"test-flower-{uuid.uuid4().hex[:10]}"
    node = f"{queue}@flower-test"
    port = free_port()
    env = flower_env(broker, pg_url, tmp / "var", port)
    app = create_app(
        load_settings(
            broker_url=BROKERS[broker],
            database_url=pg_url,
            data_dir=tmp / "var",
            task_modules=[TEST_JOBS],
        )
    )
    processes = Processes(tmp)
    try:
        processes.start(env, "worker", "-Q", queue, "-c", "1", "-n", node, "--loglevel", "INFO")
        worker_log = tmp / "worker-0.log"
        # Workers send task events only once a monitor asks: Flower asks the workers that
        # run when it starts (then every 5 s), so the worker is up before Flower starts.
        wait_for(lambda: f"{node} ready." in worker_log.read_text(), timeout_s=60)
        flower = processes.start(env, "flower")
        stack = FlowerStack(
            broker=broker,
            base_url=f"http://127.0.0.1:{port}",
            worker=node,
            queue=queue,
            app=app,
            flower=flower,
            log=tmp / "flower-1.log",
        )
        wait_until_up(stack.base_url, flower, stack.log)
        wait_for(lambda: node in stack.get("/api/workers?refresh=1").json(), timeout_s=60)
        wait_for(lambda: "Events of group {task} enabled" in worker_log.read_text(), timeout_s=30)
        yield stack
    finally:
        processes.stop_all()
        delete_queues(BROKERS[broker], [queue], pg_url=pg_url)
        app.ledger.dispose()
        app.close()


@pytest.fixture(scope="module", params=sorted(BROKERS))
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_url: str
) -> Iterator[FlowerStack]:
    broker = str(request.param)
    with flower_stack(broker, tmp_path_factory.mktemp(f"flower-{broker}"), pg_url) as started:
        yield started


@pytest.fixture(scope="module")
def finished_job(stack: FlowerStack) -> str:
    """A `test.count` job the stack's worker ran to success, after Flower started."""
    job_id = enqueue("test.count", {"counter": stack.queue}, queue=stack.queue, app=stack.app)
    wait_for(lambda: state_of(stack.app, job_id) == JobState.SUCCEEDED, timeout_s=60)
    return job_id


def test_api_lists_the_worker_and_its_finished_job(stack: FlowerStack, finished_job: str) -> None:
    workers = stack.get("/api/workers").json()
    assert stack.worker in workers, sorted(workers)

    def task() -> dict[str, Any] | None:
        found: dict[str, Any] | None = stack.get("/api/tasks").json().get(finished_job)
        return found if found and found.get("state") == "SUCCESS" else None

    seen = wait_for(task, timeout_s=30)
    assert (seen["name"], seen["worker"]) == ("test.count", stack.worker)


@pytest.mark.parametrize(
    "path", ["/api/workers", "/api/tasks", "/api/queues/length", "/workers", "/tasks", "/broker"]
)
def test_api_and_pages_refuse_requests_without_credentials(stack: FlowerStack, path: str) -> None:
    assert stack.get(path, auth=None).status_code == 401
    assert stack.get(path, auth=(USER, "wrong")).status_code == 401
    assert stack.get(path).status_code == 200


def test_nobody_sends_tasks_without_credentials(stack: FlowerStack) -> None:
    sent = httpx.post(
        f"{stack.base_url}/api/task/send-task/test.count",
        json={"kwargs": {"counter": stack.queue}, "queue": stack.queue},
        timeout=10,
    )
    assert sent.status_code == 401


def test_the_password_is_not_on_flowers_command_line(stack: FlowerStack) -> None:
    command_line = Path(f"/proc/{stack.flower.pid}/cmdline").read_bytes().split(b"\0")
    assert b"flower" in command_line
    assert not [arg for arg in command_line if PASSWORD.encode() in arg], command_line


def test_metrics_count_the_jobs_events_for_a_logged_in_scraper_only(
    stack: FlowerStack, finished_job: str
) -> None:
    assert stack.get("/metrics", auth=None).status_code == 401
    pattern = re.compile(
        r'^flower_events_total\{(?=[^}]*task="test\.count")(?=[^}]*type="task-succeeded")'
        rf'(?=[^}}]*worker="{re.escape(stack.worker)}")[^}}]*\}} (\d+\.\d+)$',
        re.MULTILINE,
    )

    def succeeded() -> float | None:
        response = stack.get("/metrics")
        assert response.status_code == 200
        match = pattern.search(response.text)
        return float(match.group(1)) if match else None

    assert wait_for(succeeded, timeout_s=30) >= 1


def test_queue_lengths_include_dead_letter_queues(stack: FlowerStack) -> None:
    if stack.broker == "rabbitmq":
        try:
            httpx.get(MANAGEMENT_API_URL + "overview", timeout=2).raise_for_status()
        except httpx.HTTPError as exc:
            pytest.skip(
                f"RabbitMQ management API unreachable ({exc}): "
                "`rabbitmq-plugins enable rabbitmq_management`"
            )
    job_id = enqueue(
        "test.gated", {"gate": stack.queue, "fatal": True}, queue=stack.queue, app=stack.app
    )
    wait_for(lambda: state_of(stack.app, job_id) == JobState.DEAD, timeout_s=60)
    dead = dead_letter_queue(stack.queue)

    def lengths() -> dict[str, int | None] | None:
        queues = stack.get("/api/queues/length").json()["active_queues"]
        found = {queue["name"]: queue.get("messages") for queue in queues}
        return found if found.get(dead) == 1 else None

    found = wait_for(lengths, timeout_s=30)
    assert found[stack.queue] == 0
    if stack.broker == "redis":
        # Conveyor's own queues are listed even with no worker on them. (RabbitMQ's API
        # reports only queues that exist, and the shared broker may have no `default`.)
        assert {"default", "default.dead"} <= set(found), sorted(found)


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOWER_")}
    return {
        **env,
        "CONVEYOR_BROKER_URL": UNREACHABLE_BROKER,
        "CONVEYOR_DATA_DIR": str(tmp_path / "var"),
        **extra,
    }


@pytest.mark.parametrize(
    ("extra", "args", "message"),
    [
        ({}, [], "CONVEYOR_FLOWER_USER and CONVEYOR_FLOWER_PASSWORD must be set"),
        ({"CONVEYOR_FLOWER_USER": USER}, [], "CONVEYOR_FLOWER_PASSWORD must be set"),
        ({}, ["--local-dev", "--address", "0.0.0.0"], "only on a loopback address"),
        (
            {
                "CONVEYOR_FLOWER_USER": USER,
                "CONVEYOR_FLOWER_PASSWORD": PASSWORD,
                "FLOWER_UNAUTHENTICATED_API": "true",
            },
            [],
            "FLOWER_UNAUTHENTICATED_API is set",
        ),
    ],
    ids=["no-credentials", "no-password", "local-dev-off-loopback", "unauthenticated-api"],
)
def test_refuses_to_start_open_to_anyone(
    tmp_path: Path, extra: dict[str, str], args: list[str], message: str
) -> None:
    result = run_cli("flower", *args, env=cli_env(tmp_path, **extra), timeout_s=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("conveyor: error: "), result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "var").exists(), "it prepared to run before refusing"


def test_local_dev_serves_loopback_without_credentials_and_saves_its_state(
    tmp_path: Path, pg_url: str
) -> None:
    port = free_port()
    env = flower_env("redis", pg_url, tmp_path / "var", port)
    del env["CONVEYOR_FLOWER_USER"], env["CONVEYOR_FLOWER_PASSWORD"]
    processes = Processes(tmp_path)
    try:
        flower = processes.start(env, "flower", "--local-dev", "--address", "127.0.0.1")
        log = tmp_path / "flower-0.log"
        base_url = f"http://127.0.0.1:{port}"
        wait_until_up(base_url, flower, log)
        assert httpx.get(f"{base_url}/workers", timeout=10).status_code == 200
        # Without credentials Flower keeps its REST API closed: only the pages open up.
        assert httpx.get(f"{base_url}/api/workers", timeout=10).status_code == 401
        flower.send_signal(signal.SIGTERM)
        assert flower.wait(30) == 0
    finally:
        processes.stop_all()
    assert "conveyor: warning: --local-dev" in log.read_text()
    saved = sorted(path.name for path in (tmp_path / "var").glob("flower.db*"))
    assert saved, "no state file under CONVEYOR_DATA_DIR"
