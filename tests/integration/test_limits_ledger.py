"""Rate and concurrency limits in one process: the ledger's statements and the runtime's gate.

Each test runs on PostgreSQL (a ledger of the module's own) and on the embedded SQLite
ledger, with the attempts run in-process by :meth:`Runtime.execute` (no broker: what a
limit decides is all in the ledger). The fleet-wide behaviour, with real worker
processes, is in ``test_limits.py``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from conveyor.config import Settings
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.constants import dead_letter_queue
from conveyor.worker.delivery import Delivery
from conveyor.worker.errors import RetryAfter
from conveyor.worker.jobs import spec_for
from conveyor.worker.ledger import NewJob
from conveyor.worker.limits import RateLimit
from conveyor.worker.models import Job, JobAttempt, JobState, utcnow
from conveyor.worker.models import RateLimit as RateLimitRow
from conveyor.worker.schema import ensure_schema
from tests.conftest import REDIS_URL, TEST_JOBS, delete_queues, producer_app

pytestmark = pytest.mark.integration


QUEUE = f"test-limits-{uuid.uuid4().hex[:8]}"
"""The jobs' queue: only a dead letter is ever published (to ``QUEUE.dead``)."""


@pytest.fixture(params=["postgresql", "sqlite"])
def ledger_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConveyorApp]:
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path / "var", task_modules=[TEST_JOBS])
        ensure_schema(settings)
        app = create_app(settings)
    else:
        own = request.getfixturevalue("own_ledger_url")
        app = producer_app(REDIS_URL, own, tmp_path)
    yield app
    if request.param == "postgresql":
        delete_queues(REDIS_URL, [QUEUE, dead_letter_queue(QUEUE)])
    app.ledger.dispose()
    app.close()


def new_job(task: str, payload: dict[str, Any]) -> NewJob:
    return NewJob(id=str(uuid.uuid4()), task=task, queue=QUEUE, payload=payload, max_attempts=3)


def run(app: ConveyorApp, job: NewJob, *, create: bool = True) -> Any:
    """One attempt of ``job`` in this process, as a worker runs it; the job's result or None."""
    if create:
        app.ledger.create(job)
    delivery = Delivery(job.id, job.queue, job.payload, None, None)
    return app.runtime.execute(spec_for(job.task), delivery)


def row(app: ConveyorApp, job_id: str) -> Job:
    with app.ledger.session() as session:
        found = session.get(Job, job_id)
        assert found is not None
        return found


def test_rate_slots_are_spaced_one_interval_apart_per_key(ledger_app: ConveyorApp) -> None:
    ledger, now = ledger_app.ledger, time.time()
    key, other = f"k-{uuid.uuid4().hex}", f"k-{uuid.uuid4().hex}"
    slots = [ledger.reserve_rate_slot(key, interval_s=0.5, now=now) for _ in range(4)]
    assert slots == pytest.approx([now, now + 0.5, now + 1.0, now + 1.5])
    assert ledger.reserve_rate_slot(other, interval_s=0.5, now=now) == pytest.approx(now)
    # Once the key has been idle, its next slot is now again: no credit piles up.
    later = now + 60
    assert ledger.reserve_rate_slot(key, interval_s=0.5, now=later) == pytest.approx(later)
    assert ledger.reserve_rate_slot(key, interval_s=0.5, now=later) == pytest.approx(later + 0.5)


def ahead(app: ConveyorApp, rate_key: str, count: int) -> float:
    """Reserve ``count`` slots of test.rated's key (3 a second), as other workers' jobs
    would; returns the next free slot."""
    now = time.time()
    for _ in range(count):
        app.ledger.reserve_rate_slot(rate_key, interval_s=1 / 3, now=now)
    return now + count / 3


def test_a_job_over_its_rate_waits_scheduled_for_its_slot_without_using_an_attempt(
    ledger_app: ConveyorApp,
) -> None:
    key = uuid.uuid4().hex
    slot = ahead(ledger_app, f"test.rated:{key}", 6)  # two seconds of starts ahead of it
    job = new_job("test.rated", {"key": key})
    assert run(ledger_app, job) is None  # more than a second off: it waits in the ledger
    waiting = row(ledger_app, job.id)
    assert waiting.state == JobState.SCHEDULED
    assert waiting.attempts == 0
    assert waiting.started_at is None
    assert waiting.rate_key == f"test.rated:{key}"
    assert waiting.rate_slot_at is not None
    assert waiting.rate_slot_at.timestamp() == pytest.approx(slot, abs=0.01)
    # Published half a second before its slot, it sleeps the rest and starts on it.
    assert waiting.run_at == waiting.rate_slot_at - timedelta(seconds=0.5)
    time.sleep(max(waiting.run_at.timestamp() - time.time(), 0))
    started = run(ledger_app, job, create=False)
    assert started == pytest.approx(slot, abs=0.05)
    assert started >= slot - 0.005
    done = row(ledger_app, job.id)
    assert done.state == JobState.SUCCEEDED
    assert done.attempts == 1  # its first attempt: waiting used none
    with ledger_app.ledger.session() as session:
        attempts = session.scalars(select(JobAttempt).where(JobAttempt.job_id == job.id)).all()
    assert attempts == []


def test_retry_after_moves_the_keys_waiting_jobs_past_it_at_the_slower_rate(
    ledger_app: ConveyorApp,
) -> None:
    ledger, key = ledger_app.ledger, uuid.uuid4().hex
    rate_key = f"test.rated:{key}"
    ahead(ledger_app, rate_key, 6)
    jobs = [new_job("test.rated", {"key": key}) for _ in range(2)]
    assert [run(ledger_app, job) for job in jobs] == [None, None]
    began = utcnow()
    ledger.slow_down(rate_key, not_before=time.time() + 5, interval_s=1.0, until=time.time() + 60)
    for job in jobs:
        moved = row(ledger_app, job.id)
        assert moved.state == JobState.SCHEDULED
        assert moved.rate_slot_at is None
        assert moved.run_at is not None
        assert moved.run_at >= began + timedelta(seconds=4.9)
    # Back after the wait, they reserve slots again: one second apart while it lasts.
    now = time.time() + 5
    slots = [ledger.reserve_rate_slot(rate_key, interval_s=0.1, now=now) for _ in range(2)]
    assert slots[0] == pytest.approx(now)
    assert slots[1] - slots[0] == pytest.approx(1.0)


def test_retry_after_from_a_job_slows_its_key(ledger_app: ConveyorApp) -> None:
    key = uuid.uuid4().hex
    throttled = new_job(
        "test.rated_429", {"key": key, "throttle": True, "delay_s": 1.5, "limit": "2/s"}
    )
    now = time.time()
    assert run(ledger_app, throttled) is None
    rate_key = f"test.rated_429:{key}"
    # No job of the key starts before the 1.5 s the server asked for, then 0.5 s apart.
    ledger = ledger_app.ledger
    slots = [ledger.reserve_rate_slot(rate_key, interval_s=0.05, now=now) for _ in range(2)]
    assert slots[0] >= now + 1.4
    assert slots[1] - slots[0] == pytest.approx(0.5)


def test_at_most_the_limit_is_claimed_per_key_and_the_rest_park_until_released(
    ledger_app: ConveyorApp,
) -> None:
    ledger = ledger_app.ledger
    key, quiet = uuid.uuid4().hex, uuid.uuid4().hex
    jobs = [new_job("test.limited", {"key": key}) for _ in range(3)]
    for job in jobs:
        ledger.create(job)
    limited = f"test.limited:{key}"
    claims = [
        ledger.claim_limited(job.id, key=limited, limit=2, lease_s=30, worker="w", foreign=job)
        for job in jobs
    ]
    assert [claim.attempt for claim in claims] == [1, 1, None]
    assert claims[2].parked
    parked = row(ledger_app, jobs[2].id)
    assert parked.state == JobState.SCHEDULED
    assert parked.attempts == 0
    assert parked.limit_key == limited
    assert parked.limit_max == 2
    # Another key is not held up by this one.
    other = new_job("test.limited", {"key": quiet})
    assert run(ledger_app, other) == 1
    # Nothing is free yet: nothing is released.
    assert ledger.release_parked() == 0
    # One attempt ends (any ending frees its slot): the oldest parked job becomes due.
    assert ledger.succeed(jobs[0].id, 1, None)
    assert ledger.release_parked() == 1
    released = row(ledger_app, jobs[2].id)
    assert released.run_at is not None
    assert released.run_at <= utcnow()
    # A slot whose worker vanished (lease expired) is free as well.
    with ledger.transaction() as session:
        session.execute(
            update(Job)
            .where(Job.id == jobs[1].id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    retry = ledger.claim_limited(
        jobs[2].id, key=limited, limit=2, lease_s=30, worker="w", foreign=jobs[2]
    )
    assert retry.attempt == 1


def test_a_foreign_message_goes_through_the_gate_too(ledger_app: ConveyorApp) -> None:
    ledger = ledger_app.ledger
    key = f"test.single:{uuid.uuid4().hex}"
    running, foreign = new_job("test.single", {}), new_job("test.single", {})
    ledger.create(running)
    assert (
        ledger.claim_limited(
            running.id, key=key, limit=1, lease_s=30, worker="w", foreign=running
        ).attempt
        == 1
    )
    # No row for `foreign` (a foreign producer): written queued, then parked.
    claim = ledger.claim_limited(
        foreign.id, key=key, limit=1, lease_s=30, worker="w", foreign=foreign
    )
    assert claim.parked
    assert row(ledger_app, foreign.id).state == JobState.SCHEDULED


def test_a_payload_without_its_limit_key_is_dead_lettered(ledger_app: ConveyorApp) -> None:
    job = new_job("test.limited", {"no_key": 1})
    assert run(ledger_app, job) is None
    dead = row(ledger_app, job.id)
    assert dead.state == JobState.DEAD
    assert dead.dead_reason == "invalid_payload"
    assert "limit key" in (dead.error_message or "")


def test_rate_limit_texts() -> None:
    assert RateLimit.parse("100/m").interval_s == pytest.approx(0.6)
    assert RateLimit.parse("30/10s").interval_s == pytest.approx(1 / 3)
    assert RateLimit.parse(" 5 / h ").interval_s == pytest.approx(720)
    for bad in ("100", "0/m", "10/x", "-1/s", "10/0s"):
        with pytest.raises(ValueError, match="rate_limit"):
            RateLimit.parse(bad)
    with pytest.raises(ValueError, match="rate_limit"):
        RetryAfter(1, limit="fast")


def test_an_api_bucket_takes_a_burst_then_one_token_an_interval(ledger_app: ConveyorApp) -> None:
    ledger, now = ledger_app.ledger, time.time()
    bucket = f"api:test:{uuid.uuid4().hex}"

    def take(at: float) -> float:
        return ledger.take_token(bucket, interval_s=2.0, burst=3, now=at)

    assert [take(now) for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    assert take(now) == pytest.approx(2.0)  # refused: the next token is 2 s away
    assert take(now + 1.0) == pytest.approx(1.0)  # a refusal spends nothing
    assert ledger.peek_token(bucket, interval_s=2.0, burst=3, now=now + 1.0) == pytest.approx(1.0)
    assert take(now + 2.0) == 0.0  # one token earned
    assert take(now + 2.0) > 0
    assert ledger.peek_token(f"{bucket}-unused", interval_s=2.0, burst=3, now=now) == 0.0


def test_idle_buckets_and_rate_keys_are_forgotten(ledger_app: ConveyorApp) -> None:
    ledger, now = ledger_app.ledger, time.time()
    old, fresh = f"auth-failures:{uuid.uuid4().hex}", f"auth-failures:{uuid.uuid4().hex}"
    slowed = f"k-{uuid.uuid4().hex}"
    ledger.take_token(old, interval_s=1.0, burst=1, now=now - 7200)
    ledger.take_token(fresh, interval_s=1.0, burst=1, now=now)
    ledger.reserve_rate_slot(slowed, interval_s=1.0, now=now - 7200)
    ledger.slow_down(slowed, not_before=now - 7200, interval_s=5.0, until=now + 60)

    assert ledger.forget_idle_buckets(now=now) >= 1
    with ledger_app.ledger.session() as session:
        kept = set(session.scalars(select(RateLimitRow.key)))
    assert old not in kept
    assert {fresh, slowed} <= kept  # in use, or still slowed by a RetryAfter
    # A forgotten bucket is a full one: the next take is allowed at once.
    assert ledger.take_token(old, interval_s=1.0, burst=1, now=now) == 0.0
