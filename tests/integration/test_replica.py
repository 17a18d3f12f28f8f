"""Reads that tolerate lag go to the read replica (CONVEYOR_DATABASE_REPLICA_URL); writes,
and reads a write depends on, never do.

The "replica" here is a second migrated database holding other rows than the primary, so
each read shows which of the two served it. That a real streaming standby serves such
reads is shown by test_standby.py and the ledger-failover chaos scenario.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from conveyor.config import load_settings
from conveyor.worker.api.pagination import JobFilter, page
from conveyor.worker.ledger import Ledger, NewJob
from conveyor.worker.ledger.dead import DeadFilter
from conveyor.worker.models import Job, utcnow
from conveyor.worker.operations.stats import queue_stats
from tests.conftest import REDIS_URL, create_ledger, drop_database, run_cli

pytestmark = pytest.mark.integration


def new_job(queue: str) -> NewJob:
    return NewJob(
        id=str(uuid.uuid4()), task="demo.work", queue=queue, payload={"n": 1}, max_attempts=4
    )


@pytest.fixture(scope="module")
def two_ledgers() -> Iterator[tuple[str, str]]:
    """A primary and a stand-in replica: two databases, so a read shows where it ran."""
    primary, replica = create_ledger("conveyor_primary"), create_ledger("conveyor_replica")
    yield primary, replica
    drop_database(primary)
    drop_database(replica)


@pytest.fixture
def ledger(two_ledgers: tuple[str, str]) -> Iterator[Ledger]:
    primary, replica = two_ledgers
    settings = load_settings(database_url=primary, database_replica_url=replica)
    made = Ledger(settings.database, pool_size=1, replica_url=settings.database_replica)
    yield made
    made.dispose()


@pytest.fixture
def rows(two_ledgers: tuple[str, str]) -> Iterator[tuple[str, NewJob, NewJob]]:
    """A queue of the test's own with one job on the primary and another on the replica."""
    queue = f"test-replica-{uuid.uuid4().hex[:8]}"
    on_primary, on_replica = new_job(queue), new_job(queue)
    ledgers = [Ledger(load_settings(database_url=url).database) for url in two_ledgers]
    ledgers[0].create(on_primary)
    ledgers[1].create(on_replica)
    yield queue, on_primary, on_replica
    for made, job in zip(ledgers, (on_primary, on_replica), strict=True):
        made.delete(job.id)
        made.dispose()


def test_lists_and_gauges_are_read_on_the_replica(
    ledger: Ledger, rows: tuple[str, NewJob, NewJob]
) -> None:
    queue, _, on_replica = rows
    assert [job.id for job in ledger.list(queue=queue)] == [on_replica.id]
    listed, _ = page(ledger, JobFilter(queue=queue), cursor=None, limit=10)
    assert [job.id for job in listed] == [on_replica.id]
    stats = {q["name"]: q for q in queue_stats(ledger)["queues"]}
    assert stats[queue]["depth"] == 1


def test_dead_letter_lists_read_on_the_replica_and_previews_on_the_primary(
    ledger: Ledger, rows: tuple[str, NewJob, NewJob], two_ledgers: tuple[str, str]
) -> None:
    queue, on_primary, on_replica = rows
    for url, job in zip(two_ledgers, (on_primary, on_replica), strict=True):
        with Ledger(load_settings(database_url=url).database).transaction() as session:
            session.execute(
                update(Job).where(Job.id == job.id).values(state="dead", finished_at=utcnow())
            )
    where = DeadFilter(queue=queue)
    assert [job.id for job in ledger.dead(where, lagging=True)] == [on_replica.id]
    # What a replay or purge would act on (and its dry run shows) is read on the primary.
    assert [job.id for job in ledger.dead(where)] == [on_primary.id]


def test_writes_and_single_job_reads_stay_on_the_primary(
    ledger: Ledger, rows: tuple[str, NewJob, NewJob], two_ledgers: tuple[str, str]
) -> None:
    queue, on_primary, on_replica = rows
    assert ledger.get(on_primary.id) is not None  # a job its producer just made is found
    assert ledger.get(on_replica.id) is None
    written = new_job(queue)
    ledger.create(written)
    try:
        assert ledger.require(written.id).state == "queued"
        assert written.id not in {job.id for job in ledger.list(queue=queue)}
        claim = ledger.claim(written.id, worker="test-replica", lease_s=30, foreign=written)
        assert claim.attempt == 1, "the claim ran on the primary, where the job is"
    finally:
        ledger.delete(written.id)


def test_the_cli_lists_on_the_replica_and_shows_from_the_primary(
    two_ledgers: tuple[str, str], rows: tuple[str, NewJob, NewJob], tmp_path: Path
) -> None:
    primary, replica = two_ledgers
    queue, on_primary, on_replica = rows
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env |= {
        "CONVEYOR_BROKER_URL": REDIS_URL,
        "CONVEYOR_DATABASE_URL": primary,
        "CONVEYOR_DATABASE_REPLICA_URL": replica,
        "CONVEYOR_DATA_DIR": str(tmp_path),
    }
    listed = run_cli("jobs", "list", "--queue", queue, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [job["id"] for job in json.loads(listed.stdout)] == [on_replica.id]
    shown = run_cli("jobs", "show", on_primary.id, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == on_primary.id


def test_a_replica_url_of_another_kind_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env |= {"CONVEYOR_DATABASE_REPLICA_URL": "mysql://u@h/db", "CONVEYOR_DATA_DIR": str(tmp_path)}
    result = run_cli("jobs", "list", env=env)
    assert result.returncode == 1
    assert "CONVEYOR_DATABASE_REPLICA_URL" in result.stderr
