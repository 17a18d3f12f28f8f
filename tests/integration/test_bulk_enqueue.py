"""Bulk enqueue: ``enqueue_many`` gives each job what ``enqueue`` gives it alone.

Real PostgreSQL, Redis and RabbitMQ: the messages are read back off the broker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kombu.connection import Connection

from conveyor.config import load_settings
from conveyor.worker.admission import IdempotencyConflict
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.client import Enqueued, JobRequest, enqueue, enqueue_many, get_job
from conveyor.worker.errors import EnqueueError, PayloadInvalid, UnknownTask, UsageError
from tests.conftest import (
    AMQP_URL,
    TEST_JOBS,
    delete_queues,
    drain_ids,
    queued_messages,
    run_cli,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_a_batch_writes_and_publishes_each_job_as_enqueue_would(
    app: ConveyorApp, broker_url: str, queue: str
) -> None:
    """Valid jobs are written and published once each; the others say why, and leave nothing."""
    held = f"held-{uuid.uuid4().hex}"
    taken = f"taken-{uuid.uuid4().hex}"
    again = f"again-{uuid.uuid4().hex}"
    existing = enqueue("test.typed", {"count": 1}, idempotency_key=held, queue=queue, app=app)
    other = enqueue("test.typed", {"count": 2}, idempotency_key=taken, queue=queue, app=app)
    assert sorted(drain_ids(broker_url, queue)) == sorted([existing, other])

    plain = [JobRequest("test.typed", {"count": n}, queue=queue) for n in range(40)]
    requests = [
        *plain,
        JobRequest("test.typed", {"count": -1}, queue=queue),  # 40: fails its schema
        JobRequest("no.such.task", {}, queue=queue),  # 41
        JobRequest("test.typed", {"count": 3}, queue=queue, priority=10),  # 42
        JobRequest("test.typed", {"count": 1}, idempotency_key=held, queue=queue),  # 43
        JobRequest("test.typed", {"count": 9}, idempotency_key=taken, queue=queue),  # 44
        JobRequest("test.typed", {"count": 5}, idempotency_key=again, queue=queue),  # 45
        JobRequest("test.typed", {"count": 5}, idempotency_key=again, queue=queue),  # 46
        JobRequest("test.typed", {"count": 6}, idempotency_key=again, queue=queue),  # 47
        JobRequest("test.typed", {"count": 7}, queue=queue, delay=3600),  # 48
        JobRequest("test.typed", {"count": 8}, queue=queue, priority=9),  # 49
    ]
    results = enqueue_many(requests, app=app)

    assert len(results) == len(requests)
    errors = {index: type(result.error) for index, result in enumerate(results) if result.error}
    assert errors == {
        40: PayloadInvalid,
        41: UnknownTask,
        42: UsageError,
        44: IdempotencyConflict,
        47: IdempotencyConflict,
    }
    assert all(results[index].id is None for index in errors)
    assert results[43] == Enqueued(existing, created=False)
    assert results[45].created
    assert results[46] == Enqueued(results[45].id, created=False)
    published = [results[i].id for i in [*range(40), 45, 49]]
    assert all(results[i].created for i in [*range(40), 45, 48, 49])
    assert len(set(published)) == 42

    wait_for(lambda: queued_messages(broker_url, queue) >= 42, timeout_s=10, every_s=0.05)
    assert sorted(drain_ids(broker_url, queue)) == sorted(published)  # each once, nothing more
    delayed = get_job(str(results[48].id), app=app)
    assert (delayed.state, delayed.run_at is not None) == ("scheduled", True)
    for index in (0, 39, 49):
        job = get_job(str(results[index].id), app=app)
        assert (job.state, job.payload, job.queue) == ("queued", requests[index].payload, queue)
    assert get_job(str(results[49].id), app=app).priority == 9
    counted = app.ledger.list(queue=queue, limit=100)
    assert len(counted) == 2 + 43  # the two earlier jobs, 42 published, 1 delayed


def test_a_batch_in_the_callers_transaction_exists_only_if_it_commits(
    app: ConveyorApp, broker_url: str, queue: str
) -> None:
    """The outbox in bulk: nothing is published; a rollback leaves no row, a commit leaves
    every row for the relay (state ``scheduled``, due now)."""
    requests = [JobRequest("test.typed", {"count": n}, queue=queue) for n in range(5)]
    with app.ledger.session() as session, session.begin():
        rolled_back = enqueue_many(requests, session=session, app=app)
        session.rollback()
    with app.ledger.transaction() as session:
        committed = enqueue_many(requests, session=session, app=app)
    assert all(result.created and result.error is None for result in rolled_back + committed)
    assert all(app.ledger.get(str(result.id)) is None for result in rolled_back)
    states = {job.state for job in app.ledger.list(queue=queue, limit=10)}
    assert (states, len(app.ledger.list(queue=queue, limit=10))) == ({"scheduled"}, 5)
    assert queued_messages(broker_url, queue) == 0


def test_a_batch_to_a_queue_deleted_behind_the_producer_still_arrives(
    pg_url: str, tmp_path: Path
) -> None:
    """RabbitMQ returns what it cannot route; the batch declares the queue again and
    publishes the returned messages once more."""
    settings = load_settings(
        broker_url=AMQP_URL, database_url=pg_url, task_modules=[TEST_JOBS], data_dir=tmp_path
    )
    app = create_app(settings)
    queue = f"test-deleted-{uuid.uuid4().hex[:8]}"
    try:
        first = enqueue("test.typed", {"count": 0}, queue=queue, app=app)
        assert drain_ids(AMQP_URL, queue) == [first]
        with Connection(AMQP_URL) as connection:
            connection.default_channel.queue_delete(queue)
        results = enqueue_many(
            [JobRequest("test.typed", {"count": n}, queue=queue) for n in range(5)], app=app
        )
        assert [result.error for result in results] == [None] * 5
        wait_for(lambda: queued_messages(AMQP_URL, queue) >= 5, timeout_s=10, every_s=0.05)
        assert sorted(drain_ids(AMQP_URL, queue)) == sorted(str(r.id) for r in results)
    finally:
        delete_queues(AMQP_URL, [queue], pg_url=pg_url)
        app.ledger.dispose()


def test_a_batch_the_broker_does_not_take_leaves_nothing_behind(
    pg_url: str, tmp_path: Path
) -> None:
    """A broker that cannot be reached: every job of the batch says so, and no row stays."""
    settings = load_settings(
        broker_url="amqp://guest:guest@127.0.0.1:1//",
        database_url=pg_url,
        task_modules=[TEST_JOBS],
        data_dir=tmp_path,
    )
    app = create_app(settings)
    queue = f"test-{uuid.uuid4().hex[:12]}"
    key = f"down-{uuid.uuid4().hex}"
    try:
        results = enqueue_many(
            [
                JobRequest("test.typed", {"count": 1}, queue=queue),
                JobRequest("test.typed", {"count": 2}, queue=queue, idempotency_key=key),
                JobRequest("test.typed", {"count": 2}, queue=queue, idempotency_key=key),
                JobRequest("test.typed", {"count": -2}, queue=queue),
            ],
            app=app,
        )
        assert [type(result.error) for result in results] == [
            EnqueueError,
            EnqueueError,
            EnqueueError,
            PayloadInvalid,
        ]
        assert app.ledger.list(queue=queue, limit=10) == []
    finally:
        app.ledger.dispose()


@pytest.mark.parametrize("size", [0, 1])
def test_an_empty_or_single_batch_is_a_batch(app: ConveyorApp, queue: str, size: int) -> None:
    results = enqueue_many(
        (JobRequest("test.typed", {"count": n}, queue=queue) for n in range(size)), app=app
    )
    assert [result.created for result in results] == [True] * size
    assert len(app.ledger.list(queue=queue, limit=10)) == size


def test_conveyor_enqueue_from_file_reports_each_refused_line_and_enqueues_the_rest(
    app: ConveyorApp, env: dict[str, str], queue: str, broker_url: str, tmp_path: Path
) -> None:
    lines = [
        json.dumps({"task": "test.typed", "payload": {"count": 1}, "queue": queue}),
        "",
        "{not json",
        json.dumps({"task": "test.typed", "payload": {"count": 2}, "queue": queue, "delay_s": 60}),
        json.dumps({"task": "test.typed", "payload": {}, "queue": queue, "colour": "red"}),
        json.dumps({"task": "no.such.task", "payload": {}, "queue": queue}),
        json.dumps({"task": "test.typed", "payload": {"count": 3}, "queue": queue, "priority": 2}),
        json.dumps({"task": "test.typed", "payload": {"count": 4}, "queue": queue}),
    ]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(lines) + "\n")

    result = run_cli("enqueue", "--from-file", str(jobs), "--batch-size", "2", env=env)

    assert result.returncode == 1, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "4 enqueued, 3 refused"
    refused = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert [line.split(":")[0] for line in refused] == ["line 3", "line 5", "line 6"]
    assert "unknown task 'no.such.task'" in refused[2]
    states = sorted(job.state for job in app.ledger.list(queue=queue, limit=10))
    assert states == ["queued", "queued", "queued", "scheduled"]
    wait_for(lambda: queued_messages(broker_url, queue) >= 3, timeout_s=10, every_s=0.05)
    assert queued_messages(broker_url, queue) == 3

    piped = subprocess.run(
        [sys.executable, "-m", "conveyor.worker.cli", "enqueue", "--from-file", "-", "--json"],
        input=lines[0] + "\n" + lines[-1] + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr
    report = json.loads(piped.stdout)
    assert (report["accepted"], report["refused"]) == (2, 0)
    assert [job["line"] for job in report["jobs"]] == [1, 2]
    assert all(app.ledger.get(job["id"]) is not None for job in report["jobs"])

    both = run_cli("enqueue", "test.typed", "--from-file", str(jobs), env=env)
    assert (both.returncode, "either TASK or --from-file" in both.stderr) == (1, True)
