"""The schedules of periodic jobs: synced definitions, ticks, pause and resume.

The relay's leader (:mod:`worker.scheduler`) writes each schedule's definition here
(:meth:`ScheduleStore.sync_schedules`) and handles its due ticks one schedule at a time in
:meth:`ScheduleStore.tick`: the row is locked with ``SKIP LOCKED`` and the tick's job is
written in the same transaction that moves ``next_tick_at`` on, so a relay that dies in
between leaves both as they were. The job's idempotency key (``schedule:<name>:<tick>``)
is unique in the ledger: even two leaders at once cannot both create a tick's job.

Pause, resume and run-now come from ``conveyor schedules`` and the API, and are audited
like queue pauses (``conveyor dlq audit``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, select
from sqlalchemy.orm import Session

from conveyor.worker.ledger.database import Database
from conveyor.worker.models import AuditEntry, Job, utcnow
from conveyor.worker.models import Schedule as ScheduleRow

Handle = Callable[[Session, ScheduleRow], None]
"""Decides on a locked schedule row's due ticks: writes their jobs and moves the row on."""


@dataclass(frozen=True, slots=True)
class ScheduleView:
    """One schedule as ``conveyor schedules list`` and ``GET /v1/schedules`` show it."""

    row: ScheduleRow
    last_job_state: str | None

    def as_dict(self) -> dict[str, Any]:
        row = self.row
        return {
            "name": row.name,
            "task": row.task,
            "queue": row.queue,
            "schedule": row.spec,
            "payload": row.payload,
            "paused": row.paused,
            "last_tick_at": row.last_tick_at,
            "last_outcome": row.last_outcome,
            "last_job_id": row.last_job_id,
            "last_job_state": self.last_job_state,
            "next_tick_at": row.next_tick_at,
            "synced_at": row.synced_at,
        }


class ScheduleStore(Database):
    """What the scheduler, ``conveyor schedules`` and the API read and write."""

    def sync_schedules(self, definitions: Sequence[dict[str, Any]]) -> None:
        """Write each definition (``name``, ``task``, ``queue``, ``spec``, ``payload`` and
        ``next_tick_at``, its first tick after now): a new schedule is inserted; a known
        one gets the definition's columns, keeping its pause and tick state, except that a
        changed ``spec`` starts again from the given first tick."""
        if not definitions:
            return
        table = ScheduleRow.__table__
        now = utcnow()
        rows = [
            {**one, "paused": False, "synced_at": now, "updated_at": now} for one in definitions
        ]
        statement = self._insert_into(table).values(rows)
        new = statement.excluded
        statement = statement.on_conflict_do_update(
            index_elements=["name"],
            set_={
                "task": new.task,
                "queue": new.queue,
                "payload": new.payload,
                "spec": new.spec,
                "next_tick_at": case(
                    (table.c.spec != new.spec, new.next_tick_at), else_=table.c.next_tick_at
                ),
                "synced_at": new.synced_at,
            },
        )
        with self.transaction() as session:
            session.execute(statement)

    def due_schedules(self, names: Sequence[str], now: datetime) -> list[str]:
        """Those of ``names`` whose next tick is at or before ``now`` (paused ones too)."""
        with self.session() as session:
            return list(
                session.scalars(
                    select(ScheduleRow.name).where(
                        ScheduleRow.name.in_(names), ScheduleRow.next_tick_at <= now
                    )
                )
            )

    def tick(self, name: str, now: datetime, handle: Handle) -> bool:
        """Lock schedule ``name`` if a tick is due and no other relay holds it, and let
        ``handle`` decide within the transaction; False if there was nothing to do."""
        with self.transaction() as session:
            row = session.scalars(
                select(ScheduleRow)
                .where(ScheduleRow.name == name, ScheduleRow.next_tick_at <= now)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return False
            handle(session, row)
            row.updated_at = utcnow()
            return True

    @staticmethod
    def job_state(session: Session, job_id: str | None) -> str | None:
        """The state of job ``job_id`` (a schedule's last job), None if it has no row."""
        if job_id is None:
            return None
        state = session.scalar(select(Job.state).where(Job.id == job_id))
        return None if state is None else str(state)

    def schedules(self) -> list[ScheduleView]:
        """Every schedule the relays have synced, by name, with its last job's state."""
        statement = (
            select(ScheduleRow, Job.state)
            .outerjoin(Job, Job.id == ScheduleRow.last_job_id)
            .order_by(ScheduleRow.name)
        )
        with self.lagging_session() as session:
            return [
                ScheduleView(row, None if state is None else str(state))
                for row, state in session.execute(statement).all()
            ]

    def schedule(self, name: str) -> ScheduleView | None:
        """Schedule ``name`` as it stands, or None if no relay has synced it."""
        statement = (
            select(ScheduleRow, Job.state)
            .outerjoin(Job, Job.id == ScheduleRow.last_job_id)
            .where(ScheduleRow.name == name)
        )
        with self.session() as session:
            found = session.execute(statement).first()
        if found is None:
            return None
        return ScheduleView(found[0], None if found[1] is None else str(found[1]))

    def pause_schedule(self, name: str, *, actor: str) -> bool | None:
        """Pause schedule ``name``: its ticks enqueue nothing until it is resumed. False if
        it was paused already, None if there is no such schedule."""
        return self._set_paused(name, paused=True, actor=actor)

    def resume_schedule(self, name: str, *, actor: str) -> bool | None:
        """Resume schedule ``name`` from now on: the ticks it missed while paused never
        run. False if it was not paused, None if there is no such schedule."""
        return self._set_paused(name, paused=False, actor=actor)

    def _set_paused(self, name: str, *, paused: bool, actor: str) -> bool | None:
        now = utcnow()
        with self.transaction() as session:
            row = session.get(ScheduleRow, name, with_for_update=True)
            if row is None:
                return None
            if row.paused == paused:
                return False
            row.paused, row.updated_at = paused, now
            if not paused and (row.next_tick_at is None or row.next_tick_at < now):
                row.next_tick_at = now  # ticks from now on; none of the paused time
            action = "schedule_pause" if paused else "schedule_resume"
            session.add(_audit(actor, action, name, []))
        return True

    def ran_now(self, name: str, job_id: str, *, actor: str) -> None:
        """Record a job enqueued by hand (``run-now``) as the schedule's last, audited:
        with ``overlap="skip"`` the next tick waits for it like for a tick's own job."""
        now = utcnow()
        with self.transaction() as session:
            row = session.get(ScheduleRow, name, with_for_update=True)
            if row is not None:
                row.last_job_id, row.last_outcome, row.updated_at = job_id, "manual", now
            session.add(_audit(actor, "schedule_run", name, [job_id]))


def _audit(actor: str, action: str, name: str, job_ids: list[str]) -> AuditEntry:
    return AuditEntry(
        at=utcnow(),
        actor=actor,
        action=action,
        filters={"schedule": name},
        job_ids=job_ids,
        count=len(job_ids),
    )
