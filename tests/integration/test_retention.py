"""Retention: finished jobs leave the ledger after their age, in small batches, while the
job path goes on; active jobs never do (:mod:`worker.ledger.retention`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, func, insert, select, text

from conveyor.worker.client import enqueue
from conveyor.worker.ledger import Ledger
from conveyor.worker.ledger.retention import RetentionPolicy, prune
from conveyor.worker.migrate import upgrade
from conveyor.worker.models import Job, JobAttempt, JobState, utcnow
from conveyor.worker.relay import Relay
from tests.conftest import (
    ProcessFactory,
    WorkerFactory,
    conveyor_env,
    producer_app,
    wait_for,
)

pytestmark = pytest.mark.integration

DAY_S = 86_400.0
POLICY = RetentionPolicy(finished_s=7 * DAY_S, dead_s=30 * DAY_S)


@pytest.fixture(params=["postgresql", "sqlite"])
def ledger(request: pytest.FixtureRequest, own_ledger_url: str, tmp_path: Path) -> Iterator[Ledger]:
    """An empty ledger: the module's own PostgreSQL database, or a fresh SQLite file."""
    if request.param == "postgresql":
        url = own_ledger_url.replace("postgresql://", "postgresql+psycopg://", 1)
    else:
        url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        upgrade(url)
    built = Ledger(url)
    with built.transaction() as session:
        session.execute(text("DELETE FROM conveyor_jobs"))
    yield built
    built.dispose()


def add_job(ledger: Ledger, state: str, *, age_s: float, attempts: int = 0, **fields: Any) -> str:
    """A job in ``state`` created and (if terminal) finished ``age_s`` ago, with ``attempts``
    failed attempts; returns its id."""
    when = utcnow() - timedelta(seconds=age_s)
    job_id = str(uuid.uuid4())
    row = {
        "id": job_id,
        "task": "test.retention",
        "queue": "retention",
        "state": state,
        "attempts": attempts,
        "max_attempts": 3,
        "payload": {"n": 1},
        "created_at": when,
        "updated_at": when,
        "finished_at": when if JobState(state).is_terminal else None,
    }
    with ledger.transaction() as session:
        session.execute(insert(Job).values(**(row | fields)))
        for number in range(1, attempts + 1):
            session.execute(
                insert(JobAttempt).values(
                    job_id=job_id, attempt=number, outcome="scheduled", finished_at=when
                )
            )
    return job_id


def remaining(ledger: Ledger) -> set[str]:
    with ledger.session() as session:
        return set(session.scalars(select(Job.id)))


def attempts_of(ledger: Ledger, job_id: str) -> int:
    with ledger.session() as session:
        return int(session.scalar(select(func.count()).where(JobAttempt.job_id == job_id)) or 0)


def test_old_finished_jobs_go_with_their_attempts_and_dead_ones_stay_longer(
    ledger: Ledger,
) -> None:
    old_succeeded = add_job(ledger, "succeeded", age_s=8 * DAY_S, attempts=2)
    old_cancelled = add_job(ledger, "cancelled", age_s=8 * DAY_S)
    young_succeeded = add_job(ledger, "succeeded", age_s=6 * DAY_S, attempts=1)
    dead = add_job(ledger, "dead", age_s=8 * DAY_S, attempts=3)
    old_dead = add_job(ledger, "dead", age_s=31 * DAY_S, attempts=3)
    replayed = add_job(ledger, "dead", age_s=8 * DAY_S, replayed_as="the-new-job")

    done = prune(ledger, POLICY)

    assert remaining(ledger) == {young_succeeded, dead}
    assert dict(done.by_state) == {"succeeded": 1, "cancelled": 1, "dead": 2}
    assert not done.more
    for gone in (old_succeeded, old_dead, old_cancelled, replayed):
        assert attempts_of(ledger, gone) == 0  # the attempts went with their job
    assert attempts_of(ledger, young_succeeded) == 1
    assert attempts_of(ledger, dead) == 3


def test_active_jobs_are_never_pruned_however_old(ledger: Ledger) -> None:
    ancient = 400 * DAY_S
    long_ago = utcnow() - timedelta(seconds=ancient)
    active = {
        add_job(ledger, state, age_s=ancient, finished_at=long_ago)  # even with a finished_at
        for state in ("queued", "scheduled", "running")
    }
    gone = add_job(ledger, "succeeded", age_s=ancient)

    done = prune(ledger, RetentionPolicy(finished_s=1.0, dead_s=1.0))

    assert done.total == 1
    assert gone not in remaining(ledger)
    assert remaining(ledger) == active


def test_an_age_of_zero_or_less_keeps_jobs_for_ever(ledger: Ledger) -> None:
    kept = {
        add_job(ledger, "succeeded", age_s=400 * DAY_S),
        add_job(ledger, "dead", age_s=400 * DAY_S),
    }
    for off in (RetentionPolicy(0, 0), RetentionPolicy(-1, None)):
        assert not off.enabled
        assert prune(ledger, off).total == 0
    assert remaining(ledger) == kept


def test_pruning_goes_in_batches_of_short_statements(ledger: Ledger) -> None:
    for _ in range(35):
        add_job(ledger, "succeeded", age_s=8 * DAY_S, attempts=1)
    deletes: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append(statement)

    event.listen(ledger.engine, "before_cursor_execute", count)
    try:
        passes = []
        while True:  # one statement a pass, as a relay with max_batches=1 runs them
            done = prune(ledger, POLICY, batch=10, max_batches=1)
            passes.append(done.total)
            if not done.more:
                break
    finally:
        event.remove(ledger.engine, "before_cursor_execute", count)

    assert passes == [10, 10, 10, 5]
    # One DELETE of at most 10 rows per statement, each its own transaction: 4 for the 35
    # rows, then one for each of the other three rules (cancelled, replayed dead, dead).
    assert len(deletes) == 7
    if ledger.is_postgresql:
        assert "LIMIT 10 " in deletes[0]
        assert "FOR UPDATE SKIP LOCKED" in deletes[0]
    assert remaining(ledger) == set()
    with ledger.session() as session:
        assert session.scalar(select(func.count()).select_from(JobAttempt)) == 0


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_the_relay_prunes_counts_and_logs(
    broker_url: str, own_ledger_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = producer_app(broker_url, own_ledger_url, tmp_path, retention_succeeded_s=3600)
    try:
        with app.ledger.transaction() as session:
            session.execute(text("DELETE FROM conveyor_jobs"))
        for _ in range(3):
            add_job(app.ledger, "succeeded", age_s=2 * 3600)
        add_job(app.ledger, "succeeded", age_s=60)
        before = REGISTRY.get_sample_value("conveyor_jobs_pruned_total", {"state": "succeeded"})
        relay = Relay(app)
        with caplog.at_level("INFO", logger="conveyor.relay"):
            assert relay.prune_if_due() == 3
            assert relay.prune_if_due() == 0  # not due again for retention_every_s
        after = REGISTRY.get_sample_value("conveyor_jobs_pruned_total", {"state": "succeeded"})
        assert (after or 0) - (before or 0) == 3
        assert [r.pruned for r in caplog.records if r.msg == "relay.pruned"] == [3]  # type: ignore[attr-defined]
    finally:
        app.ledger.dispose()
        app.close()


OLD_ROWS = 12_000


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_old_jobs_vanish_while_new_ones_keep_flowing(
    broker_url: str,
    own_ledger_url: str,
    own_queues: list[str],
    tmp_path: Path,
    start_worker: WorkerFactory,
    start_relay: ProcessFactory,
) -> None:
    queue = own_queues[0]
    with psycopg.connect(own_ledger_url, autocommit=True) as connection:
        connection.execute("DELETE FROM conveyor_jobs")
        connection.execute(
            "INSERT INTO conveyor_jobs (id, task, queue, state, attempts, max_attempts, payload, "
            "created_at, updated_at, finished_at) "
            "SELECT 'old-' || g, 'test.sleep', %s, 'succeeded', 1, 3, '{}', "
            "now() - interval '2 hours', now() - interval '2 hours', now() - interval '2 hours' "
            "FROM generate_series(1, %s) AS g",
            (queue, OLD_ROWS),
        )
        connection.execute(
            "INSERT INTO conveyor_job_attempts (job_id, attempt, outcome, finished_at) "
            "SELECT 'old-' || g, 1, 'scheduled', now() - interval '2 hours' "
            "FROM generate_series(1, %s, 3) AS g",
            (OLD_ROWS,),
        )
    kept_dead = "old-dead"
    app = producer_app(broker_url, own_ledger_url, tmp_path)
    try:
        add_job(app.ledger, "dead", age_s=2 * 3600, id=kept_dead, queue=queue)
        env = conveyor_env(
            broker_url,
            own_ledger_url,
            tmp_path,
            retention_succeeded_s="3600",
            retention_every_s="0.2",
        )
        start_worker(env, queue)
        ids = [enqueue("test.sleep", {"s": 0}, queue=queue, app=app) for _ in range(100)]
        start_relay(env)  # pruning starts while the first jobs are still queued
        ids += [enqueue("test.sleep", {"s": 0}, queue=queue, app=app) for _ in range(100)]

        def old_left() -> int:
            with psycopg.connect(own_ledger_url) as connection:
                row = connection.execute(
                    "SELECT count(*) FROM conveyor_jobs WHERE id LIKE 'old-%%' AND state <> 'dead'"
                ).fetchone()
            assert row is not None
            return int(row[0])

        wait_for(lambda: old_left() == 0, timeout_s=60)
        wait_for(lambda: app.ledger.count_by_state(ids=ids) == {"succeeded": 200}, timeout_s=60)
        assert app.ledger.get(kept_dead) is not None  # dead jobs stay for their own 30 days
        with psycopg.connect(own_ledger_url) as connection:
            row = connection.execute(
                "SELECT count(*) FROM conveyor_job_attempts WHERE job_id LIKE 'old-%%'"
            ).fetchone()
        assert row == (0,)
    finally:
        app.ledger.dispose()
        app.close()
