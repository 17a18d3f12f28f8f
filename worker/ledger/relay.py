"""The relay's queries: due retries and delays, expired leases, stranded jobs.

Rows are locked with ``SKIP LOCKED``, so several relays never take the same row in one
pass; each publishes before its transaction commits, so a relay that dies in between
leaves the rows as they were and they are published again (the claim drops the extra
message): nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select

from conveyor.worker.errors import WORKER_LOST
from conveyor.worker.ledger.database import Database
from conveyor.worker.ledger.statements import EXPIRED
from conveyor.worker.models import Job, JobAttempt, JobState, utcnow

Publish = Callable[[Job], None]
"""Hands one job's message to the broker; raises if the broker did not take it."""


class RelayQueries(Database):
    """What the relay reads and moves."""

    def release_due(self, publish: Publish, *, limit: int) -> int:
        """Publish scheduled jobs whose time has come and mark them ``queued``.

        A job whose deadline (``expires_at``) passed before it ever started is not
        published: it is marked ``cancelled`` (reason ``expired``) instead. Returns how
        many were published.

        Rows are locked with ``SKIP LOCKED``, so several relays never publish the same row
        in one pass. The publish happens before the commit: a relay that dies in between
        leaves the rows scheduled and they are published again (the claim drops the extra
        message), so nothing is lost.
        """
        now = utcnow()
        with self.transaction() as session:
            rows = session.scalars(
                select(Job)
                .where(Job.state == JobState.SCHEDULED, Job.run_at <= now)
                .order_by(Job.run_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            published = 0
            for row in rows:
                if row.started_at is None and row.expires_at is not None and row.expires_at <= now:
                    row.state, row.cancel_reason, row.finished_at = JobState.CANCELLED, EXPIRED, now
                    row.run_at, row.updated_at = None, now
                    continue
                publish(row)
                published += 1
                row.state, row.run_at, row.updated_at = JobState.QUEUED, None, now
            return published

    def recover_expired(self, publish: Publish, *, limit: int) -> int:
        """Put back running jobs whose lease expired (their worker vanished).

        The lost attempt is recorded (outcome ``lost``) and still counts: a job that kills
        its worker every time is dead-lettered after its last attempt.
        """
        now = utcnow()
        with self.transaction() as session:
            rows = session.scalars(
                select(Job)
                .where(Job.state == JobState.RUNNING, Job.lease_expires_at < now)
                .order_by(Job.lease_expires_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                publish(row)
                session.add(
                    JobAttempt(
                        job_id=row.id,
                        attempt=row.attempts,
                        outcome="lost",
                        started_at=row.started_at,
                        finished_at=now,
                        error_type=WORKER_LOST,
                        error_message=f"lease expired at {row.lease_expires_at:%H:%M:%S}Z "
                        f"on {row.worker}",
                        worker=row.worker,
                    )
                )
                row.state, row.lease_expires_at, row.updated_at = JobState.QUEUED, None, now
                row.rate_slot_at = None  # the next attempt reserves a rate slot of its own
            return len(rows)

    def stranded_queues(self, *, stale_s: float) -> list[str]:
        """Queues holding ``queued`` jobs untouched for ``stale_s`` (their message may be gone)."""
        cutoff = utcnow() - timedelta(seconds=stale_s)
        with self.session() as session:
            return list(
                session.scalars(
                    select(Job.queue)
                    .where(Job.state == JobState.QUEUED, Job.updated_at < cutoff)
                    .distinct()
                )
            )

    def republish_stranded(
        self, queue: str, publish: Publish, *, stale_s: float, limit: int
    ) -> int:
        """Publish again the stale ``queued`` jobs of ``queue``; call only when it is empty.

        A ``queued`` job has a message somewhere: in the queue, or reserved by a worker that
        claims it within seconds. When the queue is empty and the job has waited longer
        than ``stale_s``, its message was lost with a connection (a Redis worker's reserved
        messages wait out the visibility timeout) or never published (a producer died after
        writing the row). The copy this publishes is harmless if the old one turns up: the
        claim lets only one of them run.
        """
        now = utcnow()
        with self.transaction() as session:
            rows = session.scalars(
                select(Job)
                .where(
                    Job.state == JobState.QUEUED,
                    Job.queue == queue,
                    Job.updated_at < now - timedelta(seconds=stale_s),
                )
                .order_by(Job.updated_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                publish(row)
                row.updated_at = now
            return len(rows)
