"""What the console's pages read from the ledger, one function per question.

Each answers from indexed columns only, so a page stays fast with millions of jobs in the
ledger (``docs/console.md`` has the plans and the figures at ten million): no page counts
all jobs. Lists read the replica when there is one (:meth:`Database.lagging_session`); a
single job, and anything an action is about to act on, reads the primary.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select

from conveyor.worker.ledger import Ledger
from conveyor.worker.ledger.dead import DeadFilter
from conveyor.worker.models import AuditEntry, Job, JobAttempt, JobState, utcnow
from conveyor.worker.operations.scale import (
    INSPECT_TIMEOUT_S,
    RATE_WINDOW_S,
    finished_rates,
    fleet,
)
from conveyor.worker.operations.stats import empty_queue, queue_stats

CHART_MINUTES = 60
"""How far back the overview's chart goes, one bar per minute."""

FLEET_TTL_S = 10.0
"""How long the workers' answer to remote control is reused: asking takes up to a second."""


@dataclass(frozen=True, slots=True)
class Minute:
    """One bar of the overview's chart."""

    at: datetime
    succeeded: int = 0
    retried: int = 0
    dead: int = 0


def _minute(column: Any, *, postgresql: bool) -> ColumnElement[Any]:
    if postgresql:
        return func.date_trunc("minute", column)
    return func.strftime("%Y-%m-%d %H:%M", column)


def _bucket(value: Any) -> datetime:
    """A bucket as the database returned it (a datetime, or SQLite's text), in UTC."""
    if isinstance(value, datetime):
        return value.replace(second=0, microsecond=0)
    return datetime.fromisoformat(str(value) + ":00+00:00")


def throughput(
    ledger: Ledger, *, minutes: int = CHART_MINUTES, now: datetime | None = None
) -> list[Minute]:
    """Jobs succeeded, retried (an attempt that ended in a scheduled retry) and dead per
    minute over the last ``minutes``, oldest first, every minute present."""
    now = (now or utcnow()).replace(second=0, microsecond=0)
    since = now - timedelta(minutes=minutes - 1)
    pg = ledger.is_postgresql
    finished = _minute(Job.finished_at, postgresql=pg)
    jobs = (
        select(finished, Job.state, func.count())
        .where(Job.state.in_([JobState.SUCCEEDED, JobState.DEAD]), Job.finished_at >= since)
        .group_by(finished, Job.state)
    )
    attempted = _minute(JobAttempt.finished_at, postgresql=pg)
    retries = (
        select(attempted, func.count())
        .where(JobAttempt.outcome == JobState.SCHEDULED, JobAttempt.finished_at >= since)
        .group_by(attempted)
    )
    counts: dict[datetime, dict[str, int]] = {}
    with ledger.lagging_session() as session:
        for at, state, count in session.execute(jobs):
            counts.setdefault(_bucket(at), {})[state] = count
        for at, count in session.execute(retries):
            counts.setdefault(_bucket(at), {})["retried"] = count
    bars = []
    for step in range(minutes):
        at = since + timedelta(minutes=step)
        seen = counts.get(at, {})
        bars.append(
            Minute(
                at=at,
                succeeded=seen.get(JobState.SUCCEEDED, 0),
                retried=seen.get("retried", 0),
                dead=seen.get(JobState.DEAD, 0),
            )
        )
    return bars


class FleetCache:
    """Which workers consume which queue, asked of the workers by remote control, which
    waits up to :data:`INSPECT_TIMEOUT_S` for their replies.

    The first call asks and waits; later ones answer at once with the last answer and, once
    it is older than :data:`FLEET_TTL_S`, ask again in the background: a page never waits
    for the workers twice.
    """

    def __init__(self, app: Any, *, ttl_s: float = FLEET_TTL_S) -> None:
        self._app = app
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._asking = False
        self._asked_at: float | None = None
        self._consumers: dict[str, list[str]] = {}

    def consumers(self) -> dict[str, list[str]]:
        """Queue name to the names of the workers consuming it."""
        with self._lock:
            first, stale = self._asked_at is None, False
            if not first and not self._asking:
                stale = time.monotonic() - (self._asked_at or 0.0) > self._ttl_s
                self._asking = stale
        if first:
            self._ask()
        elif stale:
            threading.Thread(target=self._ask, name="console-fleet", daemon=True).start()
        return self._consumers

    def _ask(self) -> None:
        consumers: dict[str, list[str]] = {}
        try:
            for worker in fleet(self._app, timeout_s=INSPECT_TIMEOUT_S):
                for queue in worker.queues:
                    consumers.setdefault(queue, []).append(worker.name)
        except Exception:  # a broker that cannot be reached: no workers known, page stays up
            consumers = {}
        with self._lock:
            self._consumers, self._asked_at, self._asking = consumers, time.monotonic(), False


@dataclass(frozen=True, slots=True)
class Overview:
    minutes: list[Minute]
    queues: list[dict[str, Any]]
    relay_lag_s: float

    @property
    def totals(self) -> dict[str, int]:
        return {
            "succeeded": sum(m.succeeded for m in self.minutes),
            "retried": sum(m.retried for m in self.minutes),
            "dead": sum(m.dead for m in self.minutes),
        }


def overview(ledger: Ledger, workers: FleetCache, *, chart: bool = True) -> Overview:
    """The chart (unless ``chart`` is false: the queues page has none), every queue's
    backlog, oldest age, consumers and rate, and the relay's lag."""
    stats = queue_stats(ledger)
    consumers = workers.consumers()
    names = {q["name"] for q in stats["queues"]}
    queues = list(stats["queues"])
    queues += [empty_queue(name) for name in sorted(set(consumers) - names)]
    rates = finished_per_minute(ledger)
    for queue in queues:
        queue["workers"] = sorted(consumers.get(queue["name"], []))
        queue["rate_per_min"] = rates.get(queue["name"], 0)
    queues.sort(key=lambda q: q["name"])
    return Overview(throughput(ledger) if chart else [], queues, stats["relay_lag_s"])


def finished_per_minute(ledger: Ledger, *, window_s: float = RATE_WINDOW_S) -> dict[str, int]:
    """Jobs finished (succeeded or dead) per minute, per queue, over the last ``window_s``
    (``conveyor scale``'s rates, per minute)."""
    return {
        queue: round(rate * 60) for queue, rate in finished_rates(ledger, window_s=window_s).items()
    }


@dataclass(frozen=True, slots=True)
class JobDetail:
    """One job with every failed attempt, oldest first, and its replay lineage."""

    job: Job
    attempts: Sequence[JobAttempt]
    replayed_as: Job | None = None
    replay_of: Job | None = None


def job_detail(ledger: Ledger, job_id: str) -> JobDetail | None:
    with ledger.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        attempts = session.scalars(
            select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.attempt)
        ).all()
        replayed_as = session.get(Job, job.replayed_as) if job.replayed_as else None
        replay_of = session.get(Job, job.replay_of) if job.replay_of else None
        return JobDetail(job, attempts, replayed_as, replay_of)


@dataclass(frozen=True, slots=True)
class DeadGroup:
    task: str
    error_type: str | None
    count: int
    first_at: datetime | None
    last_at: datetime | None


def dead_groups(ledger: Ledger, where: DeadFilter, *, limit: int = 200) -> list[DeadGroup]:
    """Dead letters not yet replayed, grouped by task and error type, the largest first."""
    count = func.count()
    query = (
        select(
            Job.task, Job.error_type, count, func.min(Job.finished_at), func.max(Job.finished_at)
        )
        .where(*where.conditions())
        .group_by(Job.task, Job.error_type)
        .order_by(count.desc(), Job.task)
        .limit(limit)
    )
    with ledger.lagging_session() as session:
        return [DeadGroup(*row) for row in session.execute(query).all()]


def audit_entries(ledger: Ledger, *, limit: int = 100) -> Sequence[AuditEntry]:
    """The newest audit entries first."""
    return ledger.audit_log(limit=limit)


@dataclass(frozen=True, slots=True)
class ReplayProgress:
    """Where the jobs of one replay stand: how many are in each state."""

    entry: AuditEntry
    states: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return sum(n for s, n in self.states.items() if JobState(s).is_terminal)

    @property
    def done(self) -> bool:
        return self.finished >= self.entry.count


def audit_entry(ledger: Ledger, entry_id: int) -> ReplayProgress | None:
    """One audit entry; for a replay, the states of the jobs it made."""
    with ledger.session() as session:
        entry = session.get(AuditEntry, entry_id)
        if entry is None:
            return None
        states: dict[str, int] = {}
        if entry.action == "replay" and entry.job_ids:
            query = (
                select(Job.state, func.count())
                .where(Job.replay_of.in_(entry.job_ids))
                .group_by(Job.state)
            )
            states = {state: n for state, n in session.execute(query).all()}
        return ReplayProgress(entry, states)
