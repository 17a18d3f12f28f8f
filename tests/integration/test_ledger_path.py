"""The ledger's statements on every job's path, on the real PostgreSQL.

On PostgreSQL the claim, the success and a single ``create`` go straight through psycopg
(:meth:`worker.ledger.Database.direct`), not through SQLAlchemy: these tests hold that path
to what the SQLAlchemy one did — the same states and fences, SQLAlchemy's error classes
(the runtime tells an unstorable message from an unreachable ledger by them), a fresh
connection after one broke, and a forked child that leaves its parent's connection alone.
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.exc import DataError, OperationalError

from conveyor.worker.ledger import Ledger, NewJob
from conveyor.worker.migrate import upgrade
from conveyor.worker.models import Job, JobState
from tests.conftest import create_database, drop_database

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ledger_url() -> Iterator[str]:
    """A ledger of this module's own: its queued rows must not reach another test's relay."""
    url = create_database("conveyor_path")
    upgrade(url.replace("postgresql://", "postgresql+psycopg://", 1))
    yield url
    drop_database(url)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    built = Ledger(ledger_url.replace("postgresql://", "postgresql+psycopg://", 1))
    yield built
    built.dispose()


def new_job(**fields: object) -> NewJob:
    values: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "task": "test.path",
        "queue": "path",
        "payload": {"n": 1},
        "max_attempts": 3,
    }
    return NewJob(**(values | fields))  # type: ignore[arg-type]


def row_of(ledger: Ledger, job_id: str) -> Job:
    row = ledger.get(job_id)
    assert row is not None
    return row


def claim(ledger: Ledger, job: NewJob, worker: str = "w1") -> tuple[int | None, JobState]:
    claimed = ledger.claim(job.id, lease_s=60, worker=worker, foreign=job)
    return claimed.attempt, claimed.state


def test_claim_and_success_keep_their_fences(ledger: Ledger) -> None:
    job = new_job(idempotency_key=f"path-{uuid.uuid4().hex}")
    assert ledger.create(job) == (job.id, True)

    assert ledger.claim(job.id, lease_s=60, worker="w1", foreign=job).idempotency_key == (
        job.idempotency_key
    )
    row = row_of(ledger, job.id)
    assert (row.state, row.attempts, row.worker) == ("running", 1, "w1")

    held = ledger.claim(job.id, lease_s=60, worker="w2", foreign=job)  # w1's lease runs
    assert (held.attempt, held.state) == (None, JobState.RUNNING)
    assert 0 < held.busy_for_s <= 60

    assert not ledger.succeed(job.id, 2, {"ok": False})  # not this attempt: fenced out
    assert ledger.succeed(job.id, 1, {"ok": True, "items": [1, 2]})
    row = row_of(ledger, job.id)
    assert (row.state, row.lease_expires_at) == ("succeeded", None)
    assert row.result == {"ok": True, "items": [1, 2]}
    assert claim(ledger, job) == (None, JobState.SUCCEEDED)  # finished: never again


def test_a_held_key_writes_nothing_and_names_its_job(ledger: Ledger) -> None:
    key = f"path-{uuid.uuid4().hex}"
    first, second = new_job(idempotency_key=key), new_job(idempotency_key=key)
    assert ledger.create(first) == (first.id, True)
    assert ledger.create(second) == (first.id, False)
    assert ledger.get(second.id) is None


@pytest.mark.parametrize("how", ["create", "create_many"])
def test_a_value_too_long_for_its_column_is_refused_not_cut(ledger: Ledger, how: str) -> None:
    job = new_job(queue="q" * 201)  # the column holds 200
    with pytest.raises(DataError, match="too long"):
        ledger.create(job) if how == "create" else ledger.create_many([job])
    assert ledger.get(job.id) is None


def test_a_message_the_ledger_cannot_store_raises_data_error(ledger: Ledger) -> None:
    job = new_job(id="nul\x00id")
    with pytest.raises(DataError):
        ledger.claim(job.id, lease_s=60, worker="w1", foreign=job)
    good = new_job()
    ledger.create(good)
    assert claim(ledger, good) == (1, JobState.RUNNING)  # the connection still serves


def test_a_broken_connection_fails_one_statement_then_is_replaced(
    ledger: Ledger, ledger_url: str
) -> None:
    first, second = new_job(), new_job()
    ledger.create_many([first, second])
    assert claim(ledger, first) == (1, JobState.RUNNING)
    backend = ledger._direct.connection.info.backend_pid  # type: ignore[union-attr]
    with psycopg.connect(ledger_url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (backend,)).fetchone() == (True,)

    with pytest.raises(OperationalError):
        ledger.succeed(first.id, 1, None)
    assert row_of(ledger, first.id).state == "running"  # nothing was recorded
    assert ledger.succeed(first.id, 1, None)  # a new connection
    assert claim(ledger, second) == (1, JobState.RUNNING)
    assert ledger._direct.connection.info.backend_pid != backend  # type: ignore[union-attr]


def _claim_in_child(ledger: Ledger, job: NewJob, results: multiprocessing.Queue[object]) -> None:
    results.put(claim(ledger, job, worker="child"))


def test_a_forked_child_opens_its_own_connection(ledger: Ledger) -> None:
    """Celery's prefork pool forks after start-up: the parent's connection must survive."""
    parent_job, child_job, later = new_job(), new_job(), new_job()
    ledger.create_many([parent_job, child_job, later])
    assert claim(ledger, parent_job) == (1, JobState.RUNNING)  # the parent holds one now

    fork = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[object] = fork.Queue()
    child = fork.Process(target=_claim_in_child, args=(ledger, child_job, results))
    child.start()
    assert results.get(timeout=30) == (1, JobState.RUNNING)
    child.join(timeout=30)
    assert child.exitcode == 0

    assert row_of(ledger, child_job.id).worker == "child"
    assert claim(ledger, later) == (1, JobState.RUNNING)  # the parent's connection still works
    assert ledger.succeed(parent_job.id, 1, None)
