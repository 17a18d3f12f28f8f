"""Reads of the ledger for the CLI, the API and the tests: jobs, attempts, counts."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select

from conveyor.worker.errors import JobNotFound
from conveyor.worker.ledger.database import Database
from conveyor.worker.models import Job, JobAttempt


class Reads(Database):
    """Reads; none of them writes."""

    def get(self, job_id: str) -> Job | None:
        with self.session() as session:
            return session.get(Job, job_id)

    def require(self, job_id: str) -> Job:
        """The job's row; raises :class:`~worker.errors.JobNotFound` if there is none."""
        found = self.get(job_id)
        if found is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return found

    def attempts(self, job_id: str) -> Sequence[JobAttempt]:
        with self.session() as session:
            return session.scalars(
                select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.attempt)
            ).all()

    def list(
        self,
        *,
        state: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        limit: int = 50,
    ) -> Sequence[Job]:
        """Newest jobs first, filtered by any of state, task and queue (on the replica, if any)."""
        query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        if state is not None:
            query = query.where(Job.state == state)
        if task is not None:
            query = query.where(Job.task == task)
        if queue is not None:
            query = query.where(Job.queue == queue)
        with self.lagging_session() as session:
            return session.scalars(query).all()

    def count_by_state(self, *, ids: Sequence[str] | None = None) -> dict[str, int]:
        query = select(Job.state, func.count()).group_by(Job.state)
        if ids is not None:
            query = query.where(Job.id.in_(ids))
        with self.session() as session:
            return {state: count for state, count in session.execute(query)}
