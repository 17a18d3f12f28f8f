"""A worker's SIGTERM, on both brokers: jobs in flight finish, the prefetched rest is handed
back to another worker at once, nothing is lost or run twice; past the shutdown timeout
(or at a second SIGTERM) the worker stops hard and the job it was running still ends once.

Each run writes its hand-back figures to ``test-artifacts/shutdown-<broker>.json``.
"""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import JobRequest, enqueue, enqueue_many
from conveyor.worker.models import Job, JobState
from tests.conftest import (
    ROOT,
    SHORT_LEASE_S,
    Processes,
    conveyor_env,
    counter_value,
    effects_per_job,
    new_counter,
    wait_for,
)

pytestmark = pytest.mark.integration

JOBS = 200
RECEIVED = re.compile(r"Task [\w.]+\[([0-9a-f-]{36})\] received")


@pytest.fixture
def queue(own_queues: list[str]) -> str:
    return own_queues[0]


def rows(app: ConveyorApp, queue: str) -> list[Job]:
    with app.ledger.session() as session:
        return list(session.scalars(select(Job).where(Job.queue == queue)))


def pings(app: ConveyorApp, node: str) -> bool:
    return bool(app.control.ping([node], timeout=1))


def test_sigterm_finishes_what_runs_and_hands_back_the_rest_at_once(
    broker_url: str,
    own_ledger_url: str,
    producer: ConveyorApp,
    processes: Processes,
    queue: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    # Prefetch 4 per process: each worker holds up to 8 messages it has not started.
    env = conveyor_env(broker_url, own_ledger_url, tmp_path, prefetch_multiplier="4")
    leaving, staying = (f"{role}-{uuid.uuid4().hex[:6]}@shutdown" for role in ("a", "b"))
    worker = processes.start(env, "worker", "-Q", queue, "-c", "2", "-n", leaving)
    processes.start(env, "worker", "-Q", queue, "-c", "2", "-n", staying)
    wait_for(lambda: pings(producer, leaving) and pings(producer, staying), timeout_s=60)

    name = new_counter(producer)
    payload = {"counter": name, "sleep_ms": 100}
    made = enqueue_many([JobRequest("test.count", payload, queue=queue)] * JOBS, app=producer)
    ids = [item.id for item in made if item.id is not None and item.error is None]
    assert len(ids) == JOBS

    def done() -> int:
        return sum(row.state == JobState.SUCCEEDED for row in rows(producer, queue))

    wait_for(lambda: done() >= 40, timeout_s=120, every_s=0.05)
    sent_at = datetime.now(UTC)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    exited_s = (datetime.now(UTC) - sent_at).total_seconds()
    wait_for(lambda: done() == JOBS, timeout_s=180)

    finished = rows(producer, queue)
    # Every job exactly once: one effect each, the counter at JOBS, one attempt each.
    assert counter_value(producer, name) == JOBS
    assert effects_per_job(producer, ids) == dict.fromkeys(ids, 1)
    assert {row.attempts for row in finished} == {1}
    # The messages the leaving worker received but never started ran on the other one, and
    # started within seconds of the SIGTERM (not after a visibility timeout or a lease).
    log = (tmp_path / "worker-0.log").read_text()
    received = set(RECEIVED.findall(log))
    by_id = {row.id: row for row in finished}
    handed = [by_id[i] for i in received if by_id[i].worker == staying]
    assert handed, "the leaving worker had prefetched nothing: the test proves nothing"
    delays_s = sorted(
        (row.started_at - sent_at).total_seconds() for row in handed if row.started_at
    )
    assert delays_s[-1] < 30, delays_s
    report = {
        "broker": request.node.callspec.params["broker_url"],
        "jobs": JOBS,
        "handed_back": len(handed),
        "leaving_worker_exit_s": round(exited_s, 2),
        "handed_back_started_after_sigterm_s": {
            "min": round(delays_s[0], 2),
            "median": round(delays_s[len(delays_s) // 2], 2),
            "max": round(delays_s[-1], 2),
        },
    }
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / f"shutdown-{report['broker']}.json").write_text(json.dumps(report, indent=2))


@pytest.mark.parametrize(
    ("broker_url", "how"),
    [("redis", "timeout"), ("rabbitmq", "timeout"), ("redis", "second-sigterm")],
    indirect=["broker_url"],
)
def test_past_the_timeout_or_at_a_second_sigterm_the_worker_stops_hard_and_the_job_still_ends_once(
    broker_url: str,
    own_ledger_url: str,
    producer: ConveyorApp,
    processes: Processes,
    queue: str,
    tmp_path: Path,
    how: str,
) -> None:
    timeout_s = "3" if how == "timeout" else "600"
    # The relay takes the stopped job back once its lease runs out: a short one.
    env = conveyor_env(
        broker_url,
        own_ledger_url,
        tmp_path,
        shutdown_timeout_s=timeout_s,
        job_lease_s=SHORT_LEASE_S,
    )
    leaving = f"a-{uuid.uuid4().hex[:6]}@shutdown"
    worker = processes.start(env, "worker", "-Q", queue, "-c", "1", "-n", leaving)
    wait_for(lambda: pings(producer, leaving), timeout_s=60)
    job_id = enqueue("test.sleep", {"s": 6}, queue=queue, app=producer)
    wait_for(lambda: getattr(producer.ledger.get(job_id), "state", None) == JobState.RUNNING)

    worker.send_signal(signal.SIGTERM)
    if how == "second-sigterm":
        time.sleep(0.5)
        assert worker.poll() is None  # the first SIGTERM waits for the job
        worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 1  # stopped with a job unfinished: not a clean exit
    assert "worker.shutdown_hard" in (tmp_path / "worker-0.log").read_text()
    assert getattr(producer.ledger.get(job_id), "state", None) == JobState.RUNNING

    # The stopped job's message went back; another worker and the relay (lease recovery)
    # see it through to the end, once.
    processes.start(env, "worker", "-Q", queue, "-c", "1")
    processes.start(env, "relay", "--poll", "0.1")
    wait_for(
        lambda: getattr(producer.ledger.get(job_id), "state", None) == JobState.SUCCEEDED,
        timeout_s=120,
    )
    job = producer.ledger.get(job_id)
    assert job is not None
    assert job.attempts == 2
    assert job.result == 2
