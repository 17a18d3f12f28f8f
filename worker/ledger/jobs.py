"""The job's path through the ledger: create, claim, succeed, fail, renew, cancel.

These run on every job (producers and workers), so each state change is one round trip
where it can be: the claim is one autocommitted UPDATE, and so is the success of a job
that did not use ``ctx.session`` (otherwise one UPDATE inside the job's own transaction).
On PostgreSQL those two go straight through psycopg (:meth:`Database.direct`), as SQL
compiled once from the same SQLAlchemy statements that SQLite runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import UpdateBase

from conveyor.worker.errors import Failure
from conveyor.worker.ledger.claims import Claim, claim_of, why_unclaimed
from conveyor.worker.ledger.database import Database, NewJob
from conveyor.worker.ledger.inserts import insert_rows, single_insert
from conveyor.worker.ledger.statements import (
    CLAIM,
    CLAIMABLE,
    PROGRESS,
    PROGRESS_NOTE_CHARS,
    SUCCEED,
    _direct_sql,
    _jobs,
)
from conveyor.worker.models import Job, JobAttempt, JobState, utcnow


class JobPath(Database):
    """Writes of producers and workers."""

    def create(
        self,
        job: NewJob,
        *,
        window_s: float | None = None,
        session: Session | None = None,
    ) -> tuple[str, bool]:
        """Write a new job; returns ``(id, created)``.

        With an idempotency key that a job created within ``window_s`` already holds,
        nothing is written and that job's id comes back with ``created=False``; a key
        older than the window is taken from its old job and given to the new one. With
        ``session``, the row is written in the caller's transaction (the outbox): it exists
        only if the caller commits.
        """
        if session is not None:
            return self._create(session, job, window_s)
        created = self._create_alone(job)
        if created:
            return job.id, True
        # The key is taken: which job holds it, and is it still within its window?
        with self.transaction() as own:
            return self._create(own, job, window_s)

    def create_many(
        self,
        jobs: Sequence[NewJob],
        *,
        window_s: float | None = None,
        session: Session | None = None,
    ) -> list[tuple[str, bool]]:
        """Write many new jobs; returns ``(id, created)`` for each, in order.

        What :meth:`create` does for each job, with the rows written by one INSERT
        (:func:`~worker.ledger.inserts.insert_rows`): a job whose idempotency key is held
        already, by an older job or by an earlier job of the same batch, goes through
        :meth:`create`'s own path afterwards, one by one. With ``session``, every row is
        written in the caller's transaction (the outbox).
        """
        if not jobs:
            return []
        now = utcnow()
        rows = [self._new_row(job, now) for job in jobs]
        if session is not None:
            inserted = insert_rows(session.connection(), rows)
        else:
            with self.autocommit() as connection:
                inserted = insert_rows(connection, rows)
        results: list[tuple[str, bool]] = []
        for job in jobs:
            if job.id in inserted:
                results.append((job.id, True))
            elif session is not None:
                results.append(self._create(session, job, window_s))
            else:
                with self.transaction() as own:
                    results.append(self._create(own, job, window_s))
        return results

    def _create_alone(self, job: NewJob) -> bool:
        """The common case in one autocommitted INSERT (one round trip on PostgreSQL).

        False, with nothing written, when the idempotency key is held already.
        """
        row = self._new_row(job)
        keyed = job.idempotency_key is not None
        if self.is_postgresql:
            params = row | {"payload": Jsonb(row["payload"])}
            return self.direct(single_insert(tuple(row), keyed), params) is not None
        statement = self._insert_into(_jobs).values(**row)
        with self.autocommit() as connection:
            if not keyed:
                connection.execute(statement)
                return True
            statement = statement.on_conflict_do_nothing(index_elements=["idempotency_key"])
            return connection.execute(statement.returning(_jobs.c.id)).first() is not None

    def _new_row(self, job: NewJob, now: datetime | None = None) -> dict[str, Any]:
        state = JobState.SCHEDULED if job.run_at else JobState.QUEUED
        return self._row(job, now or utcnow(), state=state, attempts=0, run_at=job.run_at)

    def _create(self, session: Session, job: NewJob, window_s: float | None) -> tuple[str, bool]:
        now = utcnow()
        statement = self._insert().values(**self._new_row(job, now))
        if job.idempotency_key is None:
            session.execute(statement)
            return job.id, True
        statement = statement.on_conflict_do_nothing(index_elements=["idempotency_key"])
        inserted = session.execute(statement.returning(Job.id)).scalar_one_or_none()
        if inserted is not None:
            return inserted, True
        holder = session.execute(
            select(Job.id, Job.created_at).where(Job.idempotency_key == job.idempotency_key)
        ).one()
        if window_s is None or holder.created_at >= now - timedelta(seconds=window_s):
            return holder.id, False
        # The key's window has passed: it now names the new job.
        session.execute(update(Job).where(Job.id == holder.id).values(idempotency_key=None))
        session.execute(statement)
        return job.id, True

    def cancel(self, job_id: str) -> bool:
        """Mark a ``queued`` or ``scheduled`` job ``cancelled``; False if it was in neither."""
        now = utcnow()
        with self.transaction() as session:
            cancelled = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state.in_(CLAIMABLE))
                .values(state=JobState.CANCELLED, finished_at=now, updated_at=now, run_at=None)
                .returning(Job.id)
            ).scalar_one_or_none()
        return cancelled is not None

    def delete(self, *job_ids: str) -> None:
        """Remove jobs that were never handed to the broker (a failed enqueue)."""
        with self.transaction() as session:
            session.execute(delete(Job).where(Job.id.in_(job_ids)))

    def claim(
        self,
        job_id: str,
        *,
        lease_s: float,
        worker: str,
        foreign: NewJob,
    ) -> Claim:
        """Take the job for one attempt, if nobody else holds it and it is not finished.

        One UPDATE in the common case. A job with no row (sent by a foreign producer)
        is inserted from ``foreign`` and claimed in the same statement. A job whose
        deadline passed before it ever started is not claimed: the fallback marks it
        ``cancelled`` (reason ``expired``) and returns ``expired=True``.
        """
        now = utcnow()
        lease_expires = now + timedelta(seconds=lease_s)
        params = {"b_id": job_id, "b_now": now, "b_lease": lease_expires, "b_worker": worker}
        # One statement, committed on its own (one round trip on PostgreSQL).
        claimed = self._autocommitted(CLAIM, params)
        if claimed is not None:
            return claim_of(claimed)
        with self.transaction() as session:
            unclaimed = why_unclaimed(session, job_id, now)
            if unclaimed is not None:
                return unclaimed
            return self._claim_foreign(session, foreign, now, lease_expires, worker)

    def _claim_foreign(
        self, session: Session, job: NewJob, now: datetime, lease: datetime, worker: str
    ) -> Claim:
        statement = (
            self._insert()
            .values(
                **self._row(
                    job,
                    now,
                    state=JobState.RUNNING,
                    attempts=1,
                    started_at=now,
                    lease_expires_at=lease,
                    worker=worker,
                )
            )
            .on_conflict_do_nothing()
        )
        inserted = session.execute(statement.returning(Job.id)).scalar_one_or_none()
        if inserted is not None:
            return Claim(1, JobState.RUNNING, 0.0, job.idempotency_key)
        state = session.execute(select(Job.state).where(Job.id == job.id)).scalar_one_or_none()
        if state is None:  # the idempotency key belongs to another job: a duplicate message
            return Claim(None, JobState.CANCELLED, duplicate=True)
        # Another worker inserted the row first: wait for its lease, then look again.
        return Claim(None, JobState(state), lease_s_left(lease, now))

    def succeed(
        self, job_id: str, attempt: int, result: Any, *, session: Session | None = None
    ) -> bool:
        """Mark the attempt succeeded: inside ``session``'s transaction (the caller commits),
        or, without one, in one autocommitted statement.

        The ``attempts`` check fences out a worker whose lease was taken over: if it
        returns False, the caller must roll back so the job's effects are discarded.
        """
        params = {"b_id": job_id, "b_attempt": attempt, "b_result": result, "b_now": utcnow()}
        if session is not None:
            return session.execute(SUCCEED, params).first() is not None
        return self._autocommitted(SUCCEED, params) is not None

    def progress(self, job_id: str, attempt: int, done: int, total: int, note: str | None) -> bool:
        """Record a running attempt's progress in one autocommitted statement, outside the
        job's own transaction (so it shows while the job runs, and stays if it fails).

        Fenced on the attempt like :meth:`succeed`: False, with nothing written, when the
        job is no longer this attempt's. ``note`` is cut to :data:`PROGRESS_NOTE_CHARS`.
        """
        params = {
            "b_id": job_id,
            "b_attempt": attempt,
            "b_done": done,
            "b_total": total,
            "b_note": None if note is None else note[:PROGRESS_NOTE_CHARS],
            "b_now": utcnow(),
        }
        return self._autocommitted(PROGRESS, params) is not None

    def _autocommitted(
        self, statement: UpdateBase, params: dict[str, Any]
    ) -> tuple[Any, ...] | None:
        """Run one of the job path's statements on its own; its first row, if any."""
        if self.is_postgresql:
            sql, constants = _direct_sql(statement)
            if "b_result" in params:
                params["b_result"] = Jsonb(params["b_result"])
            return self.direct(sql, constants | params)
        with self.autocommit() as connection:
            row = connection.execute(statement, params).first()
        return None if row is None else tuple(row)

    def fail(
        self,
        job_id: str,
        attempt: int,
        failure: Failure,
        *,
        retry_in_s: float | None,
        dead_reason: str | None = None,
        ran: bool = True,
    ) -> bool:
        """Record a failed attempt: scheduled for a retry, or dead. Returns False if fenced.

        ``ran=False`` is for a claim that found the attempts already used up by crashes:
        the job is dead, and the claim is taken back rather than counted as an attempt.
        """
        now = utcnow()
        if retry_in_s is not None:
            state, run_at, finished = JobState.SCHEDULED, now + timedelta(seconds=retry_in_s), None
        else:
            state, run_at, finished = JobState.DEAD, None, now
        with self.transaction() as session:
            started = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.attempts == attempt)
                .values(
                    state=state,
                    run_at=run_at,
                    finished_at=finished,
                    updated_at=now,
                    lease_expires_at=None,
                    error_type=failure.error_type,
                    error_message=failure.message,
                    error_traceback=failure.traceback,
                    dead_reason=dead_reason,
                    rate_slot_at=None,  # a retry's attempt reserves a slot of its own
                    attempts=Job.attempts - (0 if ran else 1),
                )
                .returning(Job.started_at, Job.worker)
            ).one_or_none()
            if started is None:  # another worker took the job over: not ours to record
                return False
            if not ran:
                return True
            session.execute(
                insert(JobAttempt).values(
                    job_id=job_id,
                    attempt=attempt,
                    outcome=state,
                    started_at=started.started_at,
                    finished_at=now,
                    delay_s=retry_in_s,
                    error_type=failure.error_type,
                    error_message=failure.message,
                    error_traceback=failure.traceback,
                    worker=started.worker,
                )
            )
        return True

    def renew(self, running: dict[str, int], *, lease_s: float) -> None:
        """Extend the leases of ``{job_id: attempt}`` still held by those attempts."""
        expires = utcnow() + timedelta(seconds=lease_s)
        with self.transaction() as session:
            for job_id, attempt in running.items():
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.attempts == attempt)
                    .values(lease_expires_at=expires)
                )


def lease_s_left(lease: datetime, now: datetime) -> float:
    return max((lease - now).total_seconds(), 0.0)
