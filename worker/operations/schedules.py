"""Periodic jobs for operators: list, pause, resume, run now (``conveyor schedules``, the API).

The relays' leader syncs the schedules it knows into the ledger (:mod:`worker.scheduler`);
what is listed here is that state: each schedule's definition, the last tick and its
outcome, the last job's state and the next tick. Pause, resume and run-now are audited
with the actor (``conveyor dlq audit``).
"""

from __future__ import annotations

from typing import Any

from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import enqueue
from conveyor.worker.ledger.schedules import ScheduleView


def schedule_views(app: ConveyorApp) -> list[dict[str, Any]]:
    """Every synced schedule as JSON-ready data, by name."""
    return [view.as_dict() for view in app.ledger.schedules()]


def run_now(app: ConveyorApp, view: ScheduleView, *, actor: str) -> str:
    """Enqueue one job of schedule ``view`` now, through the producer's own path (checked,
    published at once), outside its ticks; returns its id. It becomes the schedule's last
    job, so with ``overlap="skip"`` the next tick waits for it."""
    row = view.row
    job_id = enqueue(row.task, dict(row.payload), queue=row.queue, app=app)
    app.ledger.ran_now(row.name, job_id, actor=actor)
    return job_id
