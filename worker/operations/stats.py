"""Per-queue depth and age, and the relay's lag, read from the ledger.

The ledger, not the broker, answers: it knows what is queued, running, scheduled and
dead on every broker alike, and one grouped query covers every queue. Used by
``conveyor queues`` and ``GET /v1/queues``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select

from conveyor.worker.ledger import Ledger
from conveyor.worker.models import Job, JobState, QueuePause, utcnow

COUNTED = {
    JobState.QUEUED: "depth",
    JobState.RUNNING: "running",
    JobState.SCHEDULED: "scheduled",
    JobState.DEAD: "dead",
}


def _age_s(since: datetime | None, now: datetime) -> float | None:
    return max((now - since).total_seconds(), 0.0) if since is not None else None


def empty_queue(name: str) -> dict[str, Any]:
    """A queue's entry in :func:`queue_stats` while it holds no job."""
    counts = {field: 0 for field in COUNTED.values()}
    return {"name": name, **counts, "oldest_queued_age_s": None, "paused": False}


def queue_stats(ledger: Ledger) -> dict[str, Any]:
    """Counts by queue and state, the oldest queued job's wait, whether the queue is paused,
    and the relay's lag. A paused queue is listed even when it holds no job.

    A queued job's wait is measured from when it last became ``queued`` (its
    ``updated_at``), so a job back from a retry does not look older than it is. The relay's
    lag is the age of the oldest ``scheduled`` job already due: how far publishing is
    behind (0 when nothing due waits).
    """
    now = utcnow()
    counts = (
        select(Job.queue, Job.state, func.count(), func.min(Job.updated_at))
        .where(
            or_(
                Job.state.in_([JobState.QUEUED, JobState.RUNNING, JobState.SCHEDULED]),
                and_(Job.state == JobState.DEAD, Job.replayed_as.is_(None)),
            )
        )
        .group_by(Job.queue, Job.state)
    )
    oldest_due = select(func.min(Job.run_at)).where(
        Job.state == JobState.SCHEDULED, Job.run_at <= now
    )
    with ledger.lagging_session() as session:
        rows = session.execute(counts).all()
        due = session.scalar(oldest_due)
        paused = session.scalars(select(QueuePause.queue)).all()
    queues: dict[str, dict[str, Any]] = {}

    def stats_of(name: str) -> dict[str, Any]:
        return queues.setdefault(name, empty_queue(name))

    for name, state, count, oldest in rows:
        stats = stats_of(name)
        stats[COUNTED[JobState(state)]] = count
        if state == JobState.QUEUED:
            stats["oldest_queued_age_s"] = _age_s(oldest, now)
    for name in paused:
        stats_of(name)["paused"] = True
    return {
        "queues": [queues[name] for name in sorted(queues)],
        "relay_lag_s": _age_s(due, now) or 0.0,
    }
