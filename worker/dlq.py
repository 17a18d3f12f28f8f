"""Dead-letter triage: list, show, replay and purge dead jobs, with an audit trail.

The ledger is the dead-letter store of record: a dead job keeps its payload, queue,
attempts, error type, message and traceback, and timestamps. Each queue's broker-side
dead-letter queue (``Q.dead``) mirrors it for queue-watching tools; replay and purge
remove the matching messages there too.

- **Replay** creates a new job per dead one — same task, queue, payload and idempotency
  key, attempts from zero, ``replay_of`` pointing at the dead job, whose ``replayed_as``
  points back — and hands it to the relay, spaced by the rate limit. Effects guarded by
  the key stay exactly-once: the key moves to the new job in the same transaction.
- **Purge** deletes dead jobs for good.

Both take rows with ``SKIP LOCKED`` (two operators never replay one job twice) and write
one :class:`~worker.models.AuditEntry` each: who, when, which filter, which jobs.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, select

from worker.app import ConveyorApp
from worker.deadletter import JOB_ID_HEADER, dead_letter_destination
from worker.jobs import REGISTRY
from worker.metrics import REPLAYED
from worker.models import AuditEntry, Job, JobState, utcnow
from worker.views import iso

log = logging.getLogger("conveyor.dlq")


@dataclass(frozen=True, slots=True)
class DeadFilter:
    """Which dead jobs an operation applies to; empty means all of them."""

    ids: tuple[str, ...] = ()
    queue: str | None = None
    task: str | None = None
    error_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ids"] = list(self.ids)
        data["since"], data["until"] = iso(self.since), iso(self.until)
        return {key: value for key, value in data.items() if value not in (None, [])}

    def conditions(self) -> list[ColumnElement[bool]]:
        """Dead jobs not yet replayed, narrowed by every field that is set."""
        where = [Job.state == JobState.DEAD, Job.replayed_as.is_(None)]
        if self.ids:
            where.append(Job.id.in_(self.ids))
        if self.queue is not None:
            where.append(Job.queue == self.queue)
        if self.task is not None:
            where.append(Job.task == self.task)
        if self.error_type is not None:
            where.append(Job.error_type == self.error_type)
        if self.since is not None:
            where.append(Job.finished_at >= self.since)
        if self.until is not None:
            where.append(Job.finished_at < self.until)
        return where

    def query(self) -> Select[Job]:
        """The matching dead jobs, oldest death first."""
        return select(Job).where(*self.conditions()).order_by(Job.finished_at, Job.id)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a replay or purge did (or, with ``dry_run``, would do)."""

    action: str
    dry_run: bool
    job_ids: list[str]
    new_ids: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    removed_from_broker: int = 0

    @property
    def count(self) -> int:
        return len(self.job_ids)


def dead_letter_view(job: Job, *, traceback: bool = False) -> dict[str, Any]:
    """One dead letter as JSON (the shape of ``conveyor dlq list --json``)."""
    view = {
        "id": job.id,
        "task": job.task,
        "queue": job.queue,
        "reason": job.dead_reason,
        "error_type": job.error_type,
        "error_message": job.error_message,
        "attempts": job.attempts,
        "dead_at": iso(job.finished_at),
        "created_at": iso(job.created_at),
        "idempotency_key": job.idempotency_key,
        "replay_of": job.replay_of,
        "payload": job.payload,
    }
    if traceback:
        view["traceback"] = job.error_traceback
    return view


def list_dead(app: ConveyorApp, where: DeadFilter, *, limit: int = 100) -> Sequence[Job]:
    with app.ledger.session() as session:
        return session.scalars(where.query().limit(limit)).all()


def replay(
    app: ConveyorApp,
    where: DeadFilter,
    *,
    actor: str,
    dry_run: bool = False,
    rate_per_s: float | None = None,
    limit: int = 10_000,
) -> Outcome:
    """Put dead jobs back on their original queues as new jobs (see the module docstring)."""
    if dry_run:
        jobs = list_dead(app, where, limit=limit)
        return Outcome("replay", True, [job.id for job in jobs])
    now = utcnow()
    replayed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    queues: dict[str, set[str]] = defaultdict(set)
    tasks: dict[str, tuple[str, str]] = {}
    with app.ledger.transaction() as session:
        rows = session.scalars(where.query().limit(limit).with_for_update(skip_locked=True)).all()
        for row in rows:
            spec = REGISTRY.get(row.task)
            if spec is None:
                skipped[row.id] = f"unknown task {row.task!r}"
                continue
            new_id = str(uuid.uuid4())
            key, row.idempotency_key = row.idempotency_key, None
            row.replayed_as, row.updated_at = new_id, now
            session.flush()  # frees the idempotency key before the new row takes it
            delay_s = len(replayed) / rate_per_s if rate_per_s else 0.0
            session.add(
                Job(
                    id=new_id,
                    task=row.task,
                    queue=row.queue,
                    state=JobState.SCHEDULED,
                    attempts=0,
                    max_attempts=spec.policy.max_attempts,
                    idempotency_key=key,
                    payload=row.payload,
                    priority=row.priority,
                    run_at=now + timedelta(seconds=delay_s),
                    created_at=now,
                    updated_at=now,
                    replay_of=row.id,
                )
            )
            replayed[row.id] = new_id
            queues[row.queue].add(row.id)
            tasks[row.id] = row.task, row.queue
        session.add(_audit(actor, "replay", where, list(replayed)))
    for task, queue in tasks.values():
        REPLAYED.labels(task, queue).inc()
    removed = sum(remove_dead_letters(app, queue, ids) for queue, ids in queues.items())
    log.info(
        "dlq.replayed", extra={"count": len(replayed), "actor": actor, "skipped": len(skipped)}
    )
    return Outcome("replay", False, list(replayed), list(replayed.values()), skipped, removed)


def purge(
    app: ConveyorApp, where: DeadFilter, *, actor: str, dry_run: bool = False, limit: int = 100_000
) -> Outcome:
    """Delete dead jobs (and their attempts) from the ledger and the broker for good."""
    if dry_run:
        return Outcome("purge", True, [job.id for job in list_dead(app, where, limit=limit)])
    queues: dict[str, set[str]] = defaultdict(set)
    with app.ledger.transaction() as session:
        rows = session.execute(
            where.query()
            .with_only_columns(Job.id, Job.queue)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        ids = [row.id for row in rows]
        for row in rows:
            queues[row.queue].add(row.id)
        if ids:
            session.execute(delete(Job).where(Job.id.in_(ids)))
        session.add(_audit(actor, "purge", where, ids))
    removed = sum(remove_dead_letters(app, queue, ids_) for queue, ids_ in queues.items())
    log.info("dlq.purged", extra={"count": len(ids), "actor": actor})
    return Outcome("purge", False, ids, removed_from_broker=removed)


def _audit(actor: str, action: str, where: DeadFilter, ids: list[str]) -> AuditEntry:
    return AuditEntry(
        at=utcnow(),
        actor=actor,
        action=action,
        filters=where.as_dict(),
        job_ids=ids,
        count=len(ids),
    )


def audit_log(app: ConveyorApp, *, limit: int = 50) -> Sequence[AuditEntry]:
    with app.ledger.session() as session:
        return session.scalars(select(AuditEntry).order_by(AuditEntry.at.desc()).limit(limit)).all()


def remove_dead_letters(app: ConveyorApp, queue: str, job_ids: set[str]) -> int:
    """Remove the messages of ``job_ids`` from ``queue``'s broker-side dead-letter queue.

    Every message is taken once without acknowledgement; matching ones are acknowledged
    (removed), the rest are requeued after the pass, so none is read twice or lost. Best
    effort: the ledger change is already committed, so a broker that cannot be reached
    only leaves stale copies on ``Q.dead`` (logged), never a failed replay or purge.
    """
    try:
        return _remove_dead_letters(app, queue, job_ids)
    except Exception:
        log.exception("dlq.broker_cleanup_failed", extra={"queue": queue, "jobs": len(job_ids)})
        return 0


def _remove_dead_letters(app: ConveyorApp, queue: str, job_ids: set[str]) -> int:
    removed = 0
    kept = []
    with app.connection_for_write() as connection:
        bound = dead_letter_destination(queue).bind(connection.default_channel)
        bound.declare()
        while (message := bound.get(no_ack=False)) is not None:
            if (message.headers or {}).get(JOB_ID_HEADER) in job_ids:
                message.ack()
                removed += 1
            else:
                kept.append(message)
        for message in kept:
            message.requeue()
    return removed
