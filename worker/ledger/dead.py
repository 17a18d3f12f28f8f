"""Dead letters in the ledger: bury, list, replay, purge, and their audit trail.

A job that dies on its path is recorded by :meth:`~worker.ledger.jobs.JobPath.fail`
(fenced on its attempt); a message that never became an attempt by :meth:`DeadLetterStore.bury`.
Both are called only by :class:`worker.deadletter.DeadLetters`. Replay and purge take rows
with ``SKIP LOCKED`` (two operators never replay one job twice) and write one
:class:`~worker.models.AuditEntry` each, in the same transaction; :mod:`worker.operations.dlq` adds
the broker's side and the views.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, or_, select, update

from conveyor.worker.constants import DeadReason
from conveyor.worker.errors import Failure
from conveyor.worker.ledger.database import Database, NewJob
from conveyor.worker.models import TERMINAL_STATES, AuditEntry, Job, JobState, utcnow
from conveyor.worker.operations.views import iso


@dataclass(frozen=True, slots=True)
class DeadFilter:
    """Which dead jobs an operation applies to; empty means all of them."""

    ids: tuple[str, ...] = ()
    queue: str | None = None
    task: str | None = None
    error_type: str | None = None
    reason: DeadReason | None = None
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
            where.append(error_type_matches(self.error_type))
        if self.reason is not None:
            where.append(Job.dead_reason == self.reason.value)
        if self.since is not None:
            where.append(Job.finished_at >= self.since)
        if self.until is not None:
            where.append(Job.finished_at < self.until)
        return where

    def query(self) -> Select[Job]:
        """The matching dead jobs, oldest death first."""
        return select(Job).where(*self.conditions()).order_by(Job.finished_at, Job.id)


def error_type_matches(error_type: str) -> ColumnElement[bool]:
    """Rows whose ``error_type`` is ``error_type`` (``module.QualName``).

    Dead letters written before every origin used that format kept a bare class name
    (``ValueError``): those match the name's last part, so old rows stay findable.
    """
    bare = error_type.rsplit(".", 1)[-1]
    if bare == error_type:
        return Job.error_type == error_type
    return or_(Job.error_type == error_type, Job.error_type == bare)


@dataclass(slots=True)
class Replayed:
    """What one replay changed: new job by dead job, and the dead jobs it left alone."""

    new_ids: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    rows: dict[str, tuple[str, str]] = field(default_factory=dict)
    """``(task, queue)`` of each replayed dead job."""
    audit_id: int | None = None
    """The replay's audit entry, whose page follows the new jobs."""


class DeadLetterStore(Database):
    """Dead rows: written for poison messages, read, replayed and purged by operators."""

    def bury(self, job: NewJob, failure: Failure, reason: str) -> None:
        """Record a poison message as a dead job, whether or not it had a row before."""
        now = utcnow()
        dead = {
            "state": JobState.DEAD,
            "dead_reason": reason,
            "error_type": failure.error_type,
            "error_message": failure.message,
            "error_traceback": failure.traceback,
            "finished_at": now,
            "updated_at": now,
        }
        with self.transaction() as session:
            inserted = session.execute(
                self._insert()
                .values(**self._row(job, now, attempts=0, **dead))
                .on_conflict_do_nothing()
                .returning(Job.id)
            ).scalar_one_or_none()
            if inserted is None:
                session.execute(
                    update(Job)
                    .where(Job.id == job.id, Job.state.not_in([s.value for s in TERMINAL_STATES]))
                    .values(**dead)
                )

    def dead(self, where: DeadFilter, *, limit: int = 100, lagging: bool = False) -> Sequence[Job]:
        """Dead jobs matching ``where``, not yet replayed, oldest death first; with
        ``lagging``, on the read replica if there is one (for lists, not for the previews
        of a replay or purge, which must show what the primary would act on)."""
        with self.lagging_session() if lagging else self.session() as session:
            return session.scalars(where.query().limit(limit)).all()

    def replay(
        self,
        where: DeadFilter,
        *,
        actor: str,
        max_attempts: Callable[[str], int | None],
        rate_per_s: float | None = None,
        limit: int = 10_000,
    ) -> Replayed:
        """A new ``scheduled`` job per matching dead one, spaced by ``rate_per_s``.

        Same task, queue, payload and idempotency key (moved to the new job in this
        transaction, so effects guarded by it stay exactly-once), attempts from zero.
        ``max_attempts`` gives a task's attempts, or None for a task no one declares,
        whose dead jobs are skipped.
        """
        now = utcnow()
        done = Replayed()
        with self.transaction() as session:
            rows = session.scalars(where.query().limit(limit).with_for_update(skip_locked=True))
            for row in rows.all():
                attempts = max_attempts(row.task)
                if attempts is None:
                    done.skipped[row.id] = f"unknown task {row.task!r}"
                    continue
                new_id = str(uuid.uuid4())
                key, row.idempotency_key = row.idempotency_key, None
                row.replayed_as, row.updated_at = new_id, now
                session.flush()  # frees the idempotency key before the new row takes it
                delay_s = len(done.new_ids) / rate_per_s if rate_per_s else 0.0
                session.add(
                    Job(
                        id=new_id,
                        task=row.task,
                        queue=row.queue,
                        state=JobState.SCHEDULED,
                        attempts=0,
                        max_attempts=attempts,
                        idempotency_key=key,
                        payload=row.payload,
                        priority=row.priority,
                        run_at=now + timedelta(seconds=delay_s),
                        created_at=now,
                        updated_at=now,
                        replay_of=row.id,
                    )
                )
                done.new_ids[row.id] = new_id
                done.rows[row.id] = row.task, row.queue
            entry = _audit(actor, "replay", where, list(done.new_ids))
            session.add(entry)
            session.flush()
            done.audit_id = entry.id
        return done

    def purge(self, where: DeadFilter, *, actor: str, limit: int = 100_000) -> dict[str, str]:
        """Delete matching dead jobs (and their attempts) for good; their queues by id."""
        with self.transaction() as session:
            rows = session.execute(
                where.query()
                .with_only_columns(Job.id, Job.queue)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            purged = {row.id: row.queue for row in rows}
            if purged:
                session.execute(delete(Job).where(Job.id.in_(list(purged))))
            session.add(_audit(actor, "purge", where, list(purged)))
        return purged

    def audit_log(self, *, limit: int = 50) -> Sequence[AuditEntry]:
        """The newest replays and purges first."""
        with self.session() as session:
            query = select(AuditEntry).order_by(AuditEntry.at.desc()).limit(limit)
            return session.scalars(query).all()


def _audit(actor: str, action: str, where: DeadFilter, ids: list[str]) -> AuditEntry:
    return AuditEntry(
        at=utcnow(),
        actor=actor,
        action=action,
        filters=where.as_dict(),
        job_ids=ids,
        count=len(ids),
    )
