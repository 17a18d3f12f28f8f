"""Paused queues in the ledger: written by ``conveyor queues pause`` and the API, read by
every worker (:mod:`worker.pauses`) about once a second.

A pause lives in the ledger, not in any worker, so it holds fleet-wide and across restarts:
a worker that starts while a queue is paused does not consume it. Each pause and resume
is audited like a replay or a purge (``conveyor dlq audit``).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select

from conveyor.worker.ledger.database import Database
from conveyor.worker.models import AuditEntry, QueuePause, utcnow


class PauseStore(Database):
    """Rows of ``conveyor_queue_pauses``."""

    def pause(self, queue: str, *, actor: str, reason: str | None = None) -> bool:
        """Pause ``queue``; False if it was paused already (the first pause is kept)."""
        statement = (
            self._insert_into(QueuePause.__table__)
            .values(queue=queue, paused_at=utcnow(), paused_by=actor, reason=reason)
            .on_conflict_do_nothing(index_elements=["queue"])
            .returning(QueuePause.__table__.c.queue)
        )
        with self.transaction() as session:
            paused = session.execute(statement).first() is not None
            if paused:
                session.add(_audit(actor, "pause", queue, reason))
        return paused

    def resume(self, queue: str, *, actor: str) -> bool:
        """Resume ``queue``; False if it was not paused."""
        statement = delete(QueuePause).where(QueuePause.queue == queue)
        with self.transaction() as session:
            resumed = bool(session.execute(statement).rowcount)  # type: ignore[attr-defined]
            if resumed:
                session.add(_audit(actor, "resume", queue, None))
        return resumed

    def pauses(self) -> Sequence[QueuePause]:
        """Every paused queue, by name."""
        with self.session() as session:
            return session.scalars(select(QueuePause).order_by(QueuePause.queue)).all()

    def paused_queues(self) -> frozenset[str]:
        """The names of the paused queues (what a worker polls)."""
        with self.session() as session:
            return frozenset(session.scalars(select(QueuePause.queue)))


def _audit(actor: str, action: str, queue: str, reason: str | None) -> AuditEntry:
    filters: dict[str, str] = {"queue": queue}
    if reason:
        filters["reason"] = reason
    return AuditEntry(at=utcnow(), actor=actor, action=action, filters=filters, job_ids=[], count=0)
