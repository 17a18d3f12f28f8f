"""Producers that know nothing of Conveyor: Flower's send-task API and celery-node.

A plain Celery `send_task` is covered in test_job_flow.py. Each job sent here must run on
a real worker and appear in the ledger with the same guarantees.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conveyor.config import load_settings
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.client import get_job
from conveyor.worker.models import JobState
from tests.conftest import (
    REDIS_URL,
    ROOT,
    TEST_JOBS,
    Processes,
    WorkerFactory,
    delete_queues,
    state_of,
    wait_for,
)

pytestmark = pytest.mark.integration

CELERY_NODE = "celery-node@0.5.9"
NODE_DIR = ROOT / ".cache" / "node"


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
    if not (NODE_DIR / "node_modules" / "celery-node").exists():
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(NODE_DIR),
                CELERY_NODE,
            ],
            check=True,
            timeout=300,
        )
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
    env = {
        **os.environ,
        "CONVEYOR_BROKER_URL": REDIS_URL,
        "CONVEYOR_DATABASE_URL": pg_url,
        "CONVEYOR_DATA_DIR": str(tmp_path / "var"),
        "CONVEYOR_TASK_MODULES": TEST_JOBS,
    }
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
