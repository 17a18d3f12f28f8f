"""After a run: what the ledger and the effect table say, checked against the plan."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from conveyor.worker.chaos.effects import effects
from conveyor.worker.chaos.plan import JobPlan, max_delay_s
from conveyor.worker.ledger import Ledger
from conveyor.worker.models import Job, JobAttempt, JobState

DELAY_TOLERANCE = timedelta(milliseconds=100)


@dataclass
class Report:
    """The figures of one chaos run; ``ok`` is True when every invariant held."""

    scenario: str
    broker: str
    seed: int
    jobs: int
    faults: dict[str, int]
    succeeded: int = 0
    dead: int = 0
    lost: int = 0
    duplicated_effects: int = 0
    retries: int = 0
    lost_attempts: int = 0
    p50_s: float | None = None
    p95_s: float | None = None
    elapsed_s: float = 0.0
    figures: dict[str, float] = field(default_factory=dict)
    """What the scenario measured of its faults (recovery seconds, messages lost...)."""
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check(
    ledger: Ledger,
    report: Report,
    *,
    run_id: str,
    plans: dict[str, JobPlan],
    poison: dict[str, str],
    leftover_pids: list[int],
) -> Report:
    """Fill ``report`` from the ledger and record every invariant that did not hold."""
    ids = [*plans, *poison]
    with ledger.session() as session:
        jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
        attempts = session.scalars(
            select(JobAttempt)
            .where(JobAttempt.job_id.in_(ids))
            .order_by(JobAttempt.job_id, JobAttempt.attempt)
        ).all()
        effect_counts: Counter[str] = Counter()
        for job_id, count in session.execute(
            select(effects.c.job_id, func.count())
            .where(effects.c.run_id == run_id)
            .group_by(effects.c.job_id)
        ):
            effect_counts[job_id] = count
    _check_terminal(report, ids, jobs, attempts)
    _check_plans(report, plans, jobs, effect_counts)
    for job_id, reason in poison.items():
        job = jobs.get(job_id)
        if job is not None and (job.state, job.dead_reason) != (JobState.DEAD, reason):
            report.violations.append(
                f"poison {job_id}: {job.state}/{job.dead_reason}, expected dead/{reason}"
            )
    report.succeeded = sum(1 for j in jobs.values() if j.state == JobState.SUCCEEDED)
    report.dead = sum(1 for j in jobs.values() if j.state == JobState.DEAD)
    _check_delays(report, attempts, jobs, plans)
    spans = sorted(
        (j.finished_at - j.created_at).total_seconds() for j in jobs.values() if j.finished_at
    )
    if spans:
        report.p50_s = round(statistics.median(spans), 3)
        report.p95_s = round(spans[int(0.95 * (len(spans) - 1))], 3)
    if leftover_pids:
        report.violations.append(f"processes still running after the run: {leftover_pids}")
    return report


def _check_terminal(report: Report, ids: list[str], jobs: dict[str, Job], attempts: Any) -> None:
    """Every job is terminal: count and describe those that are not (lost)."""
    for job_id in ids:
        job = jobs.get(job_id)
        if job is not None and JobState(job.state).is_terminal:
            continue
        report.lost += 1
        if job is None:
            report.violations.append(f"{job_id}: no ledger row")
            continue
        history = [f"{a.attempt}:{a.outcome}" for a in attempts if a.job_id == job_id]
        report.violations.append(
            f"{job_id}: not terminal ({job.state}, attempts {job.attempts}, "
            f"updated {job.updated_at:%H:%M:%S.%f}, worker {job.worker}, history {history})"
        )


def _check_plans(
    report: Report, plans: dict[str, JobPlan], jobs: dict[str, Job], effects: Counter[str]
) -> None:
    """Each finished job ended as planned, with its effect written exactly as often."""
    bad = report.violations
    for job_id, plan in plans.items():
        job = jobs.get(job_id)
        done = effects.get(job_id, 0)
        report.duplicated_effects += max(done - 1, 0)
        if job is None or not JobState(job.state).is_terminal:
            continue
        if job.state != plan.expect:
            bad.append(f"{job_id} (job {plan.n}): {job.state}, planned {plan.expect}")
        elif plan.expect == JobState.DEAD and job.dead_reason != plan.reason:
            bad.append(f"{job_id}: dead as {job.dead_reason}, planned {plan.reason}")
        expected_effects = 1 if plan.expect == JobState.SUCCEEDED else 0
        if done != expected_effects:
            bad.append(f"{job_id}: effect written {done} times, expected {expected_effects}")


def _check_delays(
    report: Report, attempts: Any, jobs: dict[str, Job], plans: dict[str, JobPlan]
) -> None:
    """Every retry waited no longer than the policy allows, and no less than it said."""
    by_job: dict[str, list[JobAttempt]] = {}
    for row in attempts:
        by_job.setdefault(row.job_id, []).append(row)
    for job_id, rows in by_job.items():
        plan = plans.get(job_id)
        retry_after = plan.payload.get("retry_after_s") if plan else None
        starts = [row.started_at for row in rows[1:]]
        job = jobs.get(job_id)
        starts.append(job.started_at if job is not None else None)
        for row, next_start in zip(rows, starts, strict=True):
            if row.outcome == "lost":
                report.lost_attempts += 1
                continue
            if row.outcome != JobState.SCHEDULED or row.delay_s is None:
                continue
            report.retries += 1
            ceiling = max_delay_s(row.attempt, retry_after)
            if not 0 <= row.delay_s <= ceiling + 1e-6:
                report.violations.append(
                    f"{job_id}: attempt {row.attempt} waited {row.delay_s:.2f}s, "
                    f"policy max {ceiling:.2f}s"
                )
            earliest = row.finished_at + timedelta(seconds=row.delay_s) - DELAY_TOLERANCE
            if next_start is not None and next_start < earliest:
                report.violations.append(f"{job_id}: attempt {row.attempt + 1} started early")
