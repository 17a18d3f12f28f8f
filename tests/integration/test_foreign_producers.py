"""Producers that know nothing of Conveyor: Flower's send-task API, celery-node, and a
plain Celery ``send_task`` that names no queue.

A plain Celery `send_task` to a queue is covered in test_job_flow.py. Each job sent here
must run on a real worker and appear in the ledger with the same guarantees. Tests that
declare what a foreign client declares on RabbitMQ do it in a vhost of their own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from celery import Celery
from kombu.connection import Connection
from kombu.entity import Queue

from conveyor.config import load_settings
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.client import get_job
from conveyor.worker.models import JobState
from tests.conftest import (
    MANAGEMENT_API_URL,
    NODE_DIR,
    REDIS_URL,
    ROOT,
    Processes,
    WorkerFactory,
    conveyor_env,
    delete_queues,
    metric_samples,
    npm_package,
    run_cli,
    state_of,
    wait_for,
)

pytestmark = pytest.mark.integration

CELERY_NODE = "celery-node@0.5.9"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_flower_send_task_runs_and_is_tracked(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    processes: Processes,
    start_worker: WorkerFactory,
) -> None:
    start_worker(env, queue)
    port = free_port()
    flower = subprocess.Popen(
        [
            *("celery", "-A", "conveyor.worker.celery_app", "flower", f"--port={port}"),
            *("--address=127.0.0.1", "--basic-auth=ops:secret"),
        ],
        env={**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    processes.started.append(flower)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthcheck", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout_s=60)
    denied = httpx.post(f"{base}/api/task/send-task/demo.work", json={"kwargs": {"n": 4}})
    assert denied.status_code == 401
    sent = httpx.post(
        f"{base}/api/task/send-task/demo.work",
        json={"kwargs": {"n": 4}, "queue": queue, "headers": {"idempotency_key": f"fl-{queue}"}},
        auth=("ops", "secret"),
        timeout=10,
    )
    assert sent.status_code == 200, sent.text
    job_id = sent.json()["task-id"]
    wait_for(lambda: state_of(app, job_id) == JobState.SUCCEEDED)
    job = get_job(job_id, app=app)
    assert (job.queue, job.payload, job.result) == (
        queue,
        {"n": 4},
        {"n": 4, "square": 16, "attempt": 1},
    )
    assert job.idempotency_key == f"fl-{queue}"


@pytest.fixture(scope="session")
def celery_node() -> Path:
    """celery-node, installed with npm into .cache/node once."""
    npm_package(CELERY_NODE)
    return NODE_DIR


NODE_PRODUCER = """
const celery = require("celery-node");
const [broker, queue, payload] = process.argv.slice(2);
const client = celery.createClient(broker, broker, queue);
const result = client.createTask("demo.work").applyAsync([], JSON.parse(payload));
console.log(result.taskId);
setTimeout(() => client.disconnect().then(() => process.exit(0)), 500);
"""


@pytest.fixture
def node_queue(pg_url: str, tmp_path: Path) -> Iterator[str]:
    """The celery-node test's queue on the shared Redis; deleted afterwards, with its jobs."""
    queue = f"test-node-{os.getpid()}-{tmp_path.name[-6:]}"
    yield queue
    delete_queues(REDIS_URL, [queue], pg_url=pg_url)


def test_celery_node_on_redis_runs_and_is_tracked(
    celery_node: Path, pg_url: str, tmp_path: Path, node_queue: str, processes: Processes
) -> None:
    queue = node_queue
    env = conveyor_env(REDIS_URL, pg_url, tmp_path)
    app = create_app(load_settings(broker_url=REDIS_URL, database_url=pg_url))
    processes.start(env, "worker", "-Q", queue, "-c", "1")
    script = tmp_path / "produce.js"
    script.write_text(NODE_PRODUCER)
    sent = subprocess.run(
        ["node", str(script), REDIS_URL, queue, json.dumps({"n": 6})],
        env={**os.environ, "NODE_PATH": str(celery_node / "node_modules")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    job_id = sent.stdout.strip().splitlines()[-1]
    wait_for(lambda: state_of(app, job_id) == JobState.SUCCEEDED)
    job = get_job(job_id, app=app)
    assert (job.task, job.queue, job.payload) == ("demo.work", queue, {"n": 6})
    assert job.result == {"n": 6, "square": 36, "attempt": 1}
    app.ledger.dispose()


def node_send(celery_node: Path, script: Path, broker_url: str, queue: str, n: int) -> str:
    """Send ``demo.work`` with celery-node; its job id."""
    sent = subprocess.run(
        ["node", str(script), broker_url, queue, json.dumps({"n": n})],
        env={**os.environ, "NODE_PATH": str(celery_node / "node_modules")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return sent.stdout.strip().splitlines()[-1]


def test_celery_node_on_rabbitmq_before_and_after_a_worker_starts(
    celery_node: Path, vhost_url: str, pg_url: str, tmp_path: Path, processes: Processes
) -> None:
    """celery-node declares an exchange named `default` (auto-delete) before it publishes:
    a worker whose default queue is `default` must start on that vhost and keep consuming."""
    script = tmp_path / "produce.js"
    script.write_text(NODE_PRODUCER)
    app = create_app(load_settings(broker_url=vhost_url, database_url=pg_url))
    before = node_send(celery_node, script, vhost_url, "default", 3)  # no worker yet

    worker = processes.start(conveyor_env(vhost_url, pg_url, tmp_path), "worker", "-c", "1")
    wait_for(lambda: state_of(app, before) == JobState.SUCCEEDED, timeout_s=60)
    after = node_send(celery_node, script, vhost_url, "default", 4)
    wait_for(lambda: state_of(app, after) == JobState.SUCCEEDED, timeout_s=60)

    assert worker.poll() is None  # still running, still consuming
    assert get_job(before, app=app).result == {"n": 3, "square": 9, "attempt": 1}
    assert get_job(after, app=app).result == {"n": 4, "square": 16, "attempt": 1}
    with httpx.Client(base_url=MANAGEMENT_API_URL, timeout=10) as api:
        vhost = vhost_url.rsplit("/", 1)[1]
        exchanges = {e["name"] for e in api.get(f"exchanges/{vhost}").json()}
    assert "default" in exchanges  # celery-node's, left as it declared it
    app.ledger.dispose()


def test_a_worker_that_meets_an_unrecoverable_broker_error_exits_non_zero(
    vhost_url: str, pg_url: str, tmp_path: Path, processes: Processes
) -> None:
    """A queue declared differently before (here with a priority limit) makes RabbitMQ refuse
    the worker's declaration: Celery gives up, and the exit status must say so."""
    with Connection(vhost_url) as connection:
        Queue("default", queue_arguments={"x-max-priority": 5}).bind(
            connection.default_channel
        ).declare()
    worker = processes.start(conveyor_env(vhost_url, pg_url, tmp_path), "worker", "-c", "1")
    status = worker.wait(timeout=60)
    assert status != 0
    log = (processes.tmp_path / "worker-0.log").read_text()
    assert "PRECONDITION_FAILED" in log or "PreconditionFailed" in log


def unconsumed_queues(env: dict[str, str]) -> dict[str, int]:
    """`conveyor queues --json`'s broker queues that hold messages no worker consumes."""
    result = run_cli("queues", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {queue["name"]: queue["messages"] for queue in json.loads(result.stdout)["unconsumed"]}


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_a_plain_send_task_that_names_no_queue_runs_on_a_default_worker(
    broker: str, request: pytest.FixtureRequest, pg_url: str, tmp_path: Path, processes: Processes
) -> None:
    """Celery's producers send to `celery` when they name no queue; a worker that consumes
    the default queue consumes that one too. Until one does, and for a queue no worker
    consumes at all, `conveyor queues` and the relay's metrics show the waiting messages."""
    typo = f"test-typo-{uuid.uuid4().hex[:10]}"
    if broker == "rabbitmq":
        broker_url = request.getfixturevalue("vhost_url")
        # With the management API the queues of the vhost are listed, `typo` among them.
        extra: dict[str, str] = {"broker_api_url": MANAGEMENT_API_URL}
    else:  # the shared Redis: a default queue of this test's own, and `celery` removed after
        broker_url = REDIS_URL
        own_default = f"test-default-{uuid.uuid4().hex[:10]}"
        extra = {"default_queue": own_default}
        request.addfinalizer(
            lambda: delete_queues(REDIS_URL, ["celery", own_default, typo], pg_url=pg_url)
        )
    env = conveyor_env(broker_url, pg_url, tmp_path, **extra)
    app = create_app(load_settings(broker_url=broker_url, database_url=pg_url))
    producer = Celery("plain", broker=broker_url, set_as_current=False)
    job_id = producer.send_task("test.typed", kwargs={"count": 7}).id
    for _ in range(3):
        producer.send_task("test.typed", kwargs={"count": 1}, queue=typo)
    producer.close()
    port = free_port()
    processes.start(env, "relay", "--metrics-port", str(port))  # starts up meanwhile

    assert {"celery": 1, typo: 3}.items() <= unconsumed_queues(env).items()

    def scraped() -> dict[str, float]:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            return {}
        samples = metric_samples(text)
        return {
            dict(labels)["queue"]: value
            for (name, labels), value in samples.items()
            if name == "conveyor_broker_queue_unconsumed_messages"
        }

    assert wait_for(lambda: scraped().get(typo), timeout_s=60) == 3
    assert scraped().get("celery") == 1

    processes.start(env, "worker", "-c", "1")
    wait_for(lambda: state_of(app, job_id) == JobState.SUCCEEDED, timeout_s=120)
    job = get_job(job_id, app=app)
    assert (job.task, job.queue, job.payload) == ("test.typed", "celery", {"count": 7})
    still = unconsumed_queues(env)
    assert "celery" not in still
    assert still.get(typo) == 3
    assert "celery" not in scraped()
    app.ledger.dispose()
