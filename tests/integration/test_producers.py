"""Producers: idempotent enqueue under concurrency, the transactional outbox, confirms.

Real PostgreSQL, Redis and RabbitMQ; the relays are real `conveyor relay` processes.
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections import Counter
from typing import Any

import pytest
from kombu.connection import Connection
from sqlalchemy import func, select

from conveyor.config import load_settings
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.client import JobRequest, cancel, enqueue, enqueue_many, get_job
from conveyor.worker.errors import JobNotFound
from conveyor.worker.ledger import Ledger, NewJob
from conveyor.worker.models import Job
from conveyor.worker.relay import Relay
from tests.conftest import (
    AMQP_URL,
    TEST_JOBS,
    Processes,
    delete_queues,
    drain_ids,
    kill_group,
    queued_messages,
    retire_jobs,
    take_ids,
    wait_for,
)

pytestmark = pytest.mark.integration


def rows_with_key(app: ConveyorApp, key: str) -> int:
    with app.ledger.session() as session:
        return int(session.scalar(select(func.count()).where(Job.idempotency_key == key)) or 0)


def _enqueue_in_child(args: tuple[str, str, str, str, Any]) -> str:
    broker_url, pg_url, queue, key, barrier = args
    app = create_app(load_settings(broker_url=broker_url, database_url=pg_url))
    barrier.wait(60)
    try:
        return enqueue("demo.work", {"n": 1}, idempotency_key=key, queue=queue, app=app)
    finally:
        app.ledger.dispose()


def test_eight_processes_enqueueing_one_key_make_one_job_and_one_message(
    app: ConveyorApp, broker_url: str, pg_url: str, queue: str
) -> None:
    key = f"concurrent-{uuid.uuid4()}"
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(8)
        pool = context.Pool(8)
        try:
            work = [(broker_url, pg_url, queue, key, barrier)] * 8
            ids = pool.map_async(_enqueue_in_child, work).get(timeout=120)
        finally:
            # close + join, not terminate: children exit normally (and save their coverage).
            pool.close()
            pool.join()
    assert len(set(ids)) == 1
    assert rows_with_key(app, key) == 1
    assert queued_messages(broker_url, queue) == 1


def test_outbox_commit_publishes_once_and_rollback_never_existed(
    app: ConveyorApp, broker_url: str, queue: str
) -> None:
    relay = Relay(app)
    with app.ledger.session() as session, session.begin():
        committed = enqueue("demo.work", {"n": 1}, queue=queue, session=session, app=app)
        # Not visible outside the caller's transaction, so nothing can publish it yet.
        assert app.ledger.get(committed) is None
    with app.ledger.session() as session:
        session.begin()
        rolled_back = enqueue("demo.work", {"n": 2}, queue=queue, session=session, app=app)
        session.rollback()
    assert app.ledger.get(rolled_back) is None
    assert app.ledger.get(committed) is not None

    assert relay.run_once().released >= 1
    assert relay.run_once().released == 0
    assert drain_ids(broker_url, queue) == [committed]


def outbox_rows(app: ConveyorApp, queue: str, count: int) -> list[str]:
    """``count`` outbox rows, written in one transaction (one statement: enqueue_many)."""
    request = JobRequest("test.sleep", {"s": 0}, queue=queue)
    with app.ledger.session() as session, session.begin():
        written = enqueue_many([request] * count, session=session, app=app)
    ids = [job.id for job in written if job.id is not None]
    assert len(set(ids)) == count
    return ids


def all_released(app: ConveyorApp, ids: list[str]) -> bool:
    return app.ledger.count_by_state(ids=ids) == {"queued": len(ids)}


def test_two_relays_over_2000_outbox_rows_publish_each_exactly_once(
    app: ConveyorApp, env: dict[str, str], broker_url: str, queue: str, processes: Processes
) -> None:
    # Both relays are up before the rows are (they start while the rows are written).
    processes.start(env, "relay", "--poll", "0.05")
    processes.start(env, "relay", "--poll", "0.05")
    ids = outbox_rows(app, queue, 2000)
    wait_for(lambda: all_released(app, ids), timeout_s=180, every_s=0.2)
    # Stopped before the drain: once it has emptied the queue, a relay would take the jobs,
    # still `queued` 30 s on, for stranded ones and publish them again (worker/relay.py).
    processes.stop_all()
    published = take_ids(broker_url, queue)
    assert len(published) == 2000
    assert Counter(published) == Counter(ids)


def test_a_relay_killed_mid_batch_loses_nothing(
    app: ConveyorApp, env: dict[str, str], broker_url: str, queue: str, processes: Processes
) -> None:
    first = processes.start(env, "relay", "--poll", "0.05")
    ids = outbox_rows(app, queue, 2000)
    wait_for(lambda: queued_messages(broker_url, queue) > 0, timeout_s=60, every_s=0.05)
    # The first relay leads (it published); the second starts up while the killed one's
    # leadership runs out, and takes over then.
    processes.start(env, "relay", "--poll", "0.05")
    kill_group(first)
    wait_for(lambda: all_released(app, ids), timeout_s=180, every_s=0.2)
    processes.stop_all()  # before the drain, as above
    published = take_ids(broker_url, queue)
    assert set(published) == set(ids)  # none lost; a row published just before the kill
    assert len(published) >= len(ids)  # may go out twice, and the worker's claim drops it


def test_a_queue_deleted_behind_the_producer_does_not_swallow_jobs(
    pg_url: str, tmp_path: Any
) -> None:
    """kombu remembers declared queues; a mandatory publish notices and declares again."""
    settings = load_settings(
        broker_url=AMQP_URL, database_url=pg_url, task_modules=[TEST_JOBS], data_dir=tmp_path
    )
    app = create_app(settings)
    queue = f"test-deleted-{uuid.uuid4().hex[:8]}"
    try:
        enqueue("demo.work", {"n": 1}, queue=queue, app=app)
        with Connection(AMQP_URL) as connection:
            connection.default_channel.queue_delete(queue)
        second = enqueue("demo.work", {"n": 2}, queue=queue, app=app)
        wait_for(lambda: queued_messages(AMQP_URL, queue) > 0, timeout_s=10, every_s=0.05)
        assert drain_ids(AMQP_URL, queue) == [second]
    finally:
        delete_queues(AMQP_URL, [queue], pg_url=pg_url)
        app.ledger.dispose()


def test_a_cancelled_job_never_runs_and_a_running_one_is_not_interrupted(
    app: ConveyorApp, env: dict[str, str], queue: str, start_worker: Any
) -> None:
    queued = enqueue("demo.work", {"n": 1}, queue=queue, app=app)
    delayed = enqueue("demo.work", {"n": 2}, queue=queue, delay=60, app=app)
    assert cancel(queued, app=app) is True
    assert cancel(delayed, app=app) is True
    assert cancel(queued, app=app) is False  # already cancelled
    assert Relay(app).run_once().released == 0  # a cancelled delayed job is never published

    start_worker(env, queue)
    running = enqueue("test.sleep", {"s": 2}, queue=queue, app=app)
    wait_for(lambda: get_job(running, app=app).state == "running")
    assert cancel(running, app=app) is False
    wait_for(lambda: get_job(running, app=app).state == "succeeded")
    for job_id in (queued, delayed):
        job = get_job(job_id, app=app)
        assert (job.state, job.attempts) == ("cancelled", 0)
    with pytest.raises(JobNotFound):
        cancel("no-such-job", app=app)


@pytest.mark.parametrize("in_outbox", [False, True], ids=["alone", "outbox"])
def test_an_idempotency_key_names_one_job_within_its_window_and_the_newest_after(
    pg_url: str, in_outbox: bool
) -> None:
    """Within the window a key returns its job; past it, the key moves to the new job."""
    ledger = Ledger(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    key, queue = f"key-{uuid.uuid4().hex}", f"test-{uuid.uuid4().hex[:12]}"

    def create(window_s: float | None, key: str | None = key) -> tuple[str, str, bool]:
        new = NewJob(
            id=str(uuid.uuid4()),
            task="demo.work",
            queue=queue,
            payload={},
            max_attempts=4,
            idempotency_key=key,
        )
        if not in_outbox:
            return (new.id, *ledger.create(new, window_s=window_s))
        with ledger.transaction() as session:
            return (new.id, *ledger.create(new, window_s=window_s, session=session))

    try:
        first, got, created = create(3600)
        assert (got, created) == (first, True)
        second, got, created = create(3600)
        assert (got, created) == (first, False)
        assert ledger.get(second) is None  # nothing written for the repeat
        third, got, created = create(0)  # the first job's window is over
        assert (got, created) == (third, True)
        keys = {
            job_id: job.idempotency_key for job_id in (first, third) if (job := ledger.get(job_id))
        }
        assert keys == {first: None, third: key}
        keyless, got, created = create(3600, key=None)
        assert (got, created) == (keyless, True)
        assert [job.state for job in ledger.list(queue=queue, limit=10)].count("queued") == 3
    finally:
        retire_jobs(pg_url, [queue])
        ledger.dispose()
