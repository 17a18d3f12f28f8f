"""Retention: finished jobs leave the ledger after a while, so it stays fast and small.

The ledger would otherwise keep every job and failed attempt for ever; its indexes, the
console's lists and the job path's writes all slow as it grows. The relay's leader
(:mod:`worker.relay`) calls :func:`prune` every ``CONVEYOR_RETENTION_EVERY_S`` and deletes

- ``succeeded`` and ``cancelled`` jobs that finished more than
  ``CONVEYOR_RETENTION_SUCCEEDED_S`` ago, and dead jobs already replayed (their story goes on
  in the new job, which keeps ``replay_of``), after the same age;
- every other ``dead`` job after ``CONVEYOR_RETENTION_DEAD_S`` (longer by default: someone
  may still have to act on it);
- with each job, its failed attempts (``ON DELETE CASCADE``; on SQLite too, where
  :func:`~worker.ledger.database.make_engine` turns foreign keys on).

``queued``, ``scheduled`` and ``running`` jobs are never touched: every statement names the
terminal states it deletes. An age of 0 or less switches that rule off.

Each statement deletes at most ``batch`` rows and commits on its own: a short transaction
that holds few row locks and none for long. On PostgreSQL the rows are picked with ``FOR
UPDATE SKIP LOCKED``, so a row that a replay or a purge holds is skipped, never waited
for, and two relays never delete the same rows. A pass stops after ``max_batches`` full
statements, so the relay's own duties (due retries, expired leases) wait at most a few of
them; a pass that stopped there says so (:attr:`Pruned.more`) and the relay runs the next
one at once, until the backlog of a newly enabled retention is gone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeGuard

from sqlalchemy import ColumnElement, delete, literal, select

from conveyor.worker.ledger.database import Database
from conveyor.worker.models import Job, JobState, utcnow

PRUNE_BATCH = 1000
"""Rows one pruning statement deletes at most."""

PRUNE_MAX_BATCHES = 5
"""Full statements one relay pass runs at most before it goes back to its other duties
(plus one that finds less than a batch, per rule)."""


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long finished jobs stay, in seconds; None, 0 or less: for ever."""

    finished_s: float | None
    """``succeeded`` and ``cancelled`` jobs, and dead jobs that were replayed."""
    dead_s: float | None
    """Dead jobs not replayed."""

    @property
    def enabled(self) -> bool:
        return _kept_for(self.finished_s) or _kept_for(self.dead_s)


def _kept_for(age_s: float | None) -> TypeGuard[float]:
    """Whether an age is a limit (None, 0 or less keep jobs for ever)."""
    return age_s is not None and age_s > 0


@dataclass(slots=True)
class Pruned:
    """What one pass deleted: jobs by state, the statements it took, and whether it
    stopped at ``max_batches`` with rows left to delete."""

    by_state: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    more: bool = False

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


def rules(policy: RetentionPolicy, now: datetime) -> list[list[ColumnElement[bool]]]:
    """The conditions of the rows to delete, one list per rule, each one state: with the
    batch taken oldest first, each is a range of the ``(state, finished_at)`` index that
    stops after ``batch`` rows, whatever the planner guesses of the cutoff (with two states
    at once it could not read them in ``finished_at`` order). A rule whose age is off is
    left out."""
    found: list[list[ColumnElement[bool]]] = []
    if _kept_for(policy.finished_s):
        cutoff = now - timedelta(seconds=policy.finished_s)
        for state in (JobState.SUCCEEDED, JobState.CANCELLED):
            found.append([Job.state == state, Job.finished_at < cutoff])
        found.append(
            [Job.state == JobState.DEAD, Job.replayed_as.is_not(None), Job.finished_at < cutoff]
        )
    if _kept_for(policy.dead_s):
        cutoff = now - timedelta(seconds=policy.dead_s)
        found.append([Job.state == JobState.DEAD, Job.finished_at < cutoff])
    return found


def prune_batch(
    database: Database, where: list[ColumnElement[bool]], *, limit: int
) -> Counter[str]:
    """Delete at most ``limit`` jobs matching ``where`` (and their attempts), in one
    autocommitted statement; returns how many of each state went."""
    chosen = (
        select(Job.id)
        .where(*where)
        .order_by(Job.finished_at)
        # Written into the SQL, not bound: a prepared statement's generic plan would guess a
        # tenth of the table for an unknown LIMIT, and past jit_above_cost PostgreSQL spends
        # 0.2 s compiling the statement (measured at ten million jobs).
        .limit(literal(limit, literal_execute=True))
        .with_for_update(skip_locked=True)
    )
    statement = delete(Job).where(Job.id.in_(chosen)).returning(Job.state)
    with database.autocommit() as connection:
        return Counter(connection.execute(statement).scalars())


def prune(
    database: Database,
    policy: RetentionPolicy,
    *,
    batch: int = PRUNE_BATCH,
    max_batches: int = PRUNE_MAX_BATCHES,
    now: datetime | None = None,
) -> Pruned:
    """One pass: each rule's expired jobs, ``batch`` rows a statement, until a statement
    deletes fewer (that rule is done) or ``max_batches`` full ones have run (the pass stops
    with :attr:`Pruned.more` set; the next pass starts over). Raises what the database
    raises (the relay logs a failed pass and tries again later); what was deleted before
    stays deleted."""
    now = now or utcnow()
    done = Pruned()
    full = 0
    for where in rules(policy, now):
        while True:
            deleted = prune_batch(database, where, limit=batch)
            done.batches += 1
            done.by_state.update(deleted)
            if sum(deleted.values()) < batch:
                break
            full += 1
            if full >= max_batches:
                done.more = True
                return done
    return done
