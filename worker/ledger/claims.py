"""What a claim found: the :class:`Claim`, read from the claim's row or, when it took
none, from why not (finished, held, past its deadline, parked). Shared by the plain claim
(:mod:`worker.ledger.jobs`) and the gated one (:mod:`worker.ledger.limits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from conveyor.worker.ledger.statements import CLAIMABLE, EXPIRED
from conveyor.worker.models import Job, JobState


@dataclass(frozen=True, slots=True)
class Claim:
    """Outcome of trying to claim a job for one attempt.

    ``attempt`` is set when the claim succeeded; otherwise ``state`` says why not and,
    for a job another worker holds, ``busy_for_s`` says how long its lease still runs.
    ``duplicate`` marks a foreign message whose idempotency key belongs to another job.
    """

    attempt: int | None
    state: JobState
    busy_for_s: float = 0.0
    idempotency_key: str | None = None
    duplicate: bool = False
    expired: bool = False
    """The job's deadline passed before it started: this claim cancelled it (``expired``)."""
    parked: bool = False
    """Its concurrency key was full: the job waits in the ledger (``scheduled``) until the
    relay releases it (:mod:`worker.limits`)."""
    rate_slot_at: datetime | None = None
    """The start slot the job reserved under its rate limit while it waited, if it did."""


def claim_of(claimed: tuple[Any, ...]) -> Claim:
    """The :class:`Claim` of an attempt from the claim's returned row (``CLAIMED``)."""
    return Claim(claimed[0], JobState.RUNNING, 0.0, claimed[1], rate_slot_at=claimed[2])


def why_unclaimed(session: Session, job_id: str, now: datetime) -> Claim | None:
    """Why a claim took no row: the job is finished, held, or past its deadline (which this
    marks ``cancelled``, ``expired``). None when the job has no row at all."""
    row = session.execute(
        select(Job.state, Job.lease_expires_at, Job.expires_at, Job.started_at).where(
            Job.id == job_id
        )
    ).one_or_none()
    if row is None:
        return None
    state, expires = JobState(row.state), row.lease_expires_at
    if (
        state in CLAIMABLE
        and row.started_at is None
        and row.expires_at is not None
        and row.expires_at <= now
        and _expire(session, job_id, now)
    ):
        return Claim(None, JobState.CANCELLED, expired=True)
    busy_for_s = (expires - now).total_seconds() if expires is not None else 0.0
    return Claim(None, state, max(busy_for_s, 0.0))


def _expire(session: Session, job_id: str, now: datetime) -> bool:
    """Mark a job whose deadline passed before it started ``cancelled`` (``expired``);
    False if it has moved on meanwhile (claimed, cancelled)."""
    cancelled = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.state.in_(CLAIMABLE),
            Job.started_at.is_(None),
            Job.expires_at <= now,
        )
        .values(
            state=JobState.CANCELLED,
            cancel_reason=EXPIRED,
            finished_at=now,
            updated_at=now,
            run_at=None,
        )
        .returning(Job.id)
    ).scalar_one_or_none()
    return cancelled is not None
