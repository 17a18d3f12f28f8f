"""The scheduler: the relay leader's duty of enqueuing periodic jobs, once per tick.

Called at the start of every pass of the leading relay (:meth:`worker.relay.Relay.run_once`).
The schedules are those this process knows: every ``@job(every=...)`` or
``@job(schedule=...)`` of its task modules (named after the job) and every entry of
``CONVEYOR_SCHEDULES`` (which wins over a job of the same name). A row in the ledger that
this process does not define is never acted on: a relay of another deployment, or of
another version, leaves it alone.

Each pass:

1. every :data:`SYNC_EVERY_S` (and on the first pass) the definitions are written to the
   ledger; a new schedule's first tick is the next one after that;
2. each schedule whose next tick has come is locked and decided on (:func:`worker.schedules.due`):
   its jobs are written as ``scheduled`` rows due at their tick, with the idempotency key
   ``schedule:<name>:<tick>``, in the transaction that moves the schedule on. The same
   pass's ``release_due`` publishes them (the outbox): a relay that dies in between
   loses nothing, and a second leader finds the key taken and writes nothing.

A schedule that fails (its task unknown to this process, its payload invalid, the ledger
refusing) is logged and left for the next pass; the other schedules and the relay's own
duties go on.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from time import monotonic

from sqlalchemy.orm import Session

from conveyor.worker.app import ConveyorApp
from conveyor.worker.catalog import job_type
from conveyor.worker.errors import ConveyorError
from conveyor.worker.jobs import REGISTRY
from conveyor.worker.ledger import NewJob
from conveyor.worker.models import JobState, utcnow
from conveyor.worker.models import Schedule as ScheduleRow
from conveyor.worker.observability.metrics import SCHEDULE_TICKS
from conveyor.worker.schedules import Declared, due, parse_declared, tick_key

log = logging.getLogger("conveyor.scheduler")

SYNC_EVERY_S = 60.0
UNFINISHED = frozenset({JobState.QUEUED, JobState.SCHEDULED, JobState.RUNNING})


def declared_schedules(app: ConveyorApp) -> dict[str, Declared]:
    """This process's schedules by name: its jobs' own, then ``CONVEYOR_SCHEDULES``."""
    found = {
        spec.name: Declared(spec.name, spec.name, spec.queue, spec.schedule)
        for spec in REGISTRY.values()
        if spec.schedule is not None
    }
    for one in parse_declared(app.settings.schedules):
        found[one.name] = one
    return found


class Scheduler:
    """Enqueues the due ticks of this process's schedules (see the module's docstring)."""

    def __init__(self, app: ConveyorApp, *, sync_every_s: float = SYNC_EVERY_S) -> None:
        self.app = app
        self.sync_every_s = sync_every_s
        self.schedules = declared_schedules(app)
        self._synced_at: float | None = None
        self._queues: dict[str, tuple[str, int]] = {}

    def run_due(self) -> int:
        """Sync if due, then handle every due tick; how many jobs were written."""
        if not self.schedules:
            return 0
        if self._synced_at is None or monotonic() - self._synced_at >= self.sync_every_s:
            self.sync()
        now = utcnow()
        written = 0
        for name in self.app.ledger.due_schedules(list(self._queues), now):
            try:
                written += self._tick(name, now)
            except Exception:  # one schedule's trouble must not hold up the others
                log.warning("schedule.failed", extra={"schedule": name}, exc_info=True)
        return written

    def sync(self) -> None:
        """Write the definitions whose task this process can enqueue to the ledger."""
        definitions = []
        for name, one in self.schedules.items():
            try:
                spec = job_type(self.app.ledger, one.task)
                spec.check_schema(one.schedule.payload)
            except ConveyorError as exc:
                log.warning("schedule.invalid", extra={"schedule": name, "error": str(exc)})
                self._queues.pop(name, None)
                continue
            queue = one.queue or spec.queue or self.app.settings.default_queue
            self._queues[name] = (queue, spec.max_attempts)
            definitions.append(
                {
                    "name": name,
                    "task": one.task,
                    "queue": queue,
                    "spec": one.schedule.describe(),
                    "payload": one.schedule.payload,
                    "next_tick_at": one.schedule.next_after(utcnow()),
                }
            )
        self.app.ledger.sync_schedules(definitions)
        self._synced_at = monotonic()

    def _tick(self, name: str, now: datetime) -> int:
        written: list[int] = [0]

        def handle(session: Session, row: ScheduleRow) -> None:
            written[0] = self._decide(session, row, now)

        self.app.ledger.tick(name, now, handle)
        return written[0]

    def _decide(self, session: Session, row: ScheduleRow, now: datetime) -> int:
        """Decide on ``row``'s due ticks inside its transaction; how many jobs were written."""
        one = self.schedules[row.name]
        schedule = one.schedule
        next_tick = row.next_tick_at or now
        if row.paused:
            paused = schedule.count(next_tick, now + timedelta(microseconds=1))
            row.next_tick_at = schedule.next_after(now)
            row.last_outcome = "paused" if paused else row.last_outcome
            _count(row.name, "paused", paused)
            return 0
        decided = due(schedule, next_tick=next_tick, now=now)
        row.next_tick_at = decided.next_tick
        if decided.missed:
            row.last_outcome = "missed"
            _count(row.name, "missed", decided.missed)
            log.warning("schedule.missed", extra={"schedule": row.name, "ticks": decided.missed})
        if not decided.run:
            return 0
        row.last_tick_at = decided.run[-1]
        last_state = self.app.ledger.job_state(session, row.last_job_id)
        if schedule.overlap == "skip" and last_state in UNFINISHED:
            row.last_outcome = "skipped_overlap"
            _count(row.name, "skipped_overlap", len(decided.run))
            for tick in decided.run:
                _log_tick(row.name, tick, "skipped_overlap", row.last_job_id)
            return 0
        written = 0
        for tick in decided.run:
            job_id, created = self.app.ledger.create(
                self._job(row.name, tick), window_s=None, session=session
            )
            outcome = "enqueued" if created else "duplicate"
            written += created
            row.last_job_id, row.last_outcome = job_id, outcome
            _count(row.name, outcome, 1)
            _log_tick(row.name, tick, outcome, job_id)
        return written

    def _job(self, name: str, tick: datetime) -> NewJob:
        """The job of schedule ``name`` for ``tick``: due at the tick, keyed by it."""
        one = self.schedules[name]
        queue, max_attempts = self._queues[name]
        return NewJob(
            id=str(uuid.uuid4()),
            task=one.task,
            queue=queue,
            payload=one.schedule.payload,
            max_attempts=max_attempts,
            idempotency_key=tick_key(name, tick),
            run_at=tick,
        )


def _count(name: str, outcome: str, ticks: int) -> None:
    if ticks:
        SCHEDULE_TICKS.labels(name, outcome).inc(ticks)


def _log_tick(name: str, tick: datetime, outcome: str, job_id: str | None) -> None:
    log.info(
        "schedule.tick",
        extra={"schedule": name, "tick": tick.isoformat(), "outcome": outcome, "job_id": job_id},
    )
