"""The shared state of rate and concurrency limits: one ledger for the whole fleet.

**Rate** (``conveyor_rate_limits``): each key has the next free start slot, ``next_at``
(the generic cell rate algorithm's "theoretical arrival time", in Unix seconds). A worker
about to start a rate-limited attempt *reserves* a slot in one upsert: the slot is
``max(next_at, now)``, and ``next_at`` moves one interval past it. A slot that is now
starts at once; a later one sends the job back to the ledger (``scheduled``, ``run_at`` =
the slot) with its attempt given back, and it starts when the relay publishes it. Every
waiting job holds a slot of its own, so a burst of N jobs is spread over N intervals and
each job comes back once, never in a herd.

**Concurrency** (``conveyor_jobs.limit_key``): an attempt holds its key's slot while its row
is ``running`` on a live lease, so a slot is freed by any ending at all, a killed worker's
included (its lease runs out). The gated claim counts the key's live attempts and claims
in one statement, under a transaction-scoped advisory lock on the key (PostgreSQL; SQLite
has one writer at a time), so two workers never both take the last slot. A job whose key
is full is *parked*: ``scheduled`` with the key, never claimed, until the relay releases
the oldest parked jobs of each key as slots free up (:meth:`LimitStore.release_parked`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from conveyor.worker.ledger.claims import Claim, claim_of, why_unclaimed
from conveyor.worker.ledger.database import Database, NewJob
from conveyor.worker.ledger.statements import (
    _THIS_ATTEMPT,
    CLAIM_VALUES,
    CLAIMABLE,
    CLAIMABLE_NOW,
    CLAIMED,
    _direct_sql,
    _jobs,
    _now,
)
from conveyor.worker.models import Job, JobState, RateLimit, UTCDateTime, utcnow

PARKED_RECHECK_S = 30.0
"""A parked job is published again after this long even if the relay never released it:
its claim then looks at its key once more (a safety net, not the release)."""

_rates = cast(Table, RateLimit.__table__)
_key: Any = bindparam("b_key")
_unix_now: Any = bindparam("b_unix_now")
_interval: Any = bindparam("b_interval")


def _reserve(insert: Any) -> Any:
    """The slot reservation as one upsert; returns the new ``next_at`` and the interval used
    (the slow one while a ``RetryAfter`` holds), so ``slot = next_at - interval``."""
    stored = _rates.c
    used = case((stored.slow_until > _unix_now, stored.slow_interval_s), else_=_interval)
    return (
        insert(_rates)
        .values(key=_key, next_at=_unix_now + _interval)
        .on_conflict_do_update(
            index_elements=[stored.key],
            set_={
                "next_at": case((stored.next_at > _unix_now, stored.next_at), else_=_unix_now)
                + used
            },
        )
        .returning(stored.next_at, used)
    )


RESERVE_PG, RESERVE_SQLITE = _reserve(postgresql.insert), _reserve(sqlite.insert)

_busy = (
    select(func.count())
    .select_from(_jobs)
    .where(
        _jobs.c.limit_key == _key,
        _jobs.c.state == JobState.RUNNING.value,
        _jobs.c.lease_expires_at > _now,
        _jobs.c.id != bindparam("b_id"),
    )
    .scalar_subquery()
)
_limit: Any = bindparam("b_limit")
GATED_CLAIM = (
    update(_jobs)
    .where(_jobs.c.id == bindparam("b_id"), CLAIMABLE_NOW, _busy < _limit)
    .values({**CLAIM_VALUES, "limit_key": _key, "limit_max": _limit})
    .returning(*CLAIMED)
)
"""The claim of a concurrency-limited job: taken only while its key has a free slot."""
PARK = (
    update(_jobs)
    .where(
        _jobs.c.id == bindparam("b_id"),
        or_(*(_jobs.c.state == state.value for state in CLAIMABLE)),
        _jobs.c.expires_at.is_(None) | (_jobs.c.expires_at > _now),
    )
    .values(
        state=JobState.SCHEDULED.value,
        run_at=bindparam("b_recheck", type_=UTCDateTime()),
        limit_key=_key,
        limit_max=_limit,
        updated_at=_now,
    )
    .returning(_jobs.c.id)
)
DEFER = (
    update(_jobs)
    .where(*_THIS_ATTEMPT)
    .values(
        state=JobState.SCHEDULED.value,
        run_at=bindparam("b_until", type_=UTCDateTime()),
        rate_slot_at=bindparam("b_slot", type_=UTCDateTime()),
        rate_key=_key,
        # The attempt is given back: waiting for a slot is not an attempt.
        attempts=_jobs.c.attempts - 1,
        started_at=case((_jobs.c.attempts == 1, None), else_=_jobs.c.started_at),
        lease_expires_at=None,
        updated_at=_now,
    )
    .returning(_jobs.c.id)
)


_parked = (_jobs.c.state == JobState.SCHEDULED.value) & (_jobs.c.run_at > _now)
_in_use = (_jobs.c.state == JobState.QUEUED.value) | (
    (_jobs.c.state == JobState.RUNNING.value) & (_jobs.c.lease_expires_at > _now)
)
PARKED_KEYS = (
    select(_jobs.c.limit_key, func.max(_jobs.c.limit_max), func.count().filter(_in_use))
    .where(
        _jobs.c.limit_key.is_not(None),
        or_(*(_jobs.c.state == state.value for state in (*CLAIMABLE, JobState.RUNNING))),
    )
    .group_by(_jobs.c.limit_key)
    .having(func.count().filter(_parked) > 0)
)
"""The keys with parked jobs: each key's limit and how many of its jobs are queued or
running on a live lease."""

LOCK_KEY = "SELECT pg_advisory_xact_lock(hashtextextended(%(b_key)s, 0))"


def _direct_step(statement: Any, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    sql, constants = _direct_sql(statement)
    return sql, constants | params


class LimitStore(Database):
    """Rate slots and concurrency-gated claims, shared by every worker; the relay's release."""

    def reserve_rate_slot(self, key: str, *, interval_s: float, now: float) -> float:
        """Reserve the next start slot of ``key`` (Unix seconds; ``now`` or later) in one
        upsert: the key's next slot moves one interval (or its slow interval) past it."""
        params = {"b_key": key, "b_unix_now": now, "b_interval": interval_s}
        if self.is_postgresql:
            sql, constants = _direct_sql(RESERVE_PG)
            row = self.direct(sql, constants | params)
        else:
            with self.autocommit() as connection:
                row = connection.execute(RESERVE_SQLITE, params).first()
        assert row is not None  # an upsert always returns its row
        next_at, used = float(row[0]), float(row[1])
        return next_at - used

    def slow_down(
        self, key: str, *, not_before: float, interval_s: float | None, until: float | None
    ) -> None:
        """Start no job of ``key`` before ``not_before``, and space its starts by
        ``interval_s`` until ``until`` (a job's ``RetryAfter``; Unix seconds).

        The key's jobs that wait for a slot reserved earlier give it up and wait until
        ``not_before``: they then reserve slots again, at the slower pace.
        """
        stored = _rates.c
        values: dict[str, Any] = {"key": key, "next_at": not_before}
        later = case((stored.next_at > not_before, stored.next_at), else_=not_before)
        updates: dict[str, Any] = {"next_at": later}
        if interval_s is not None and until is not None:
            values |= {"slow_interval_s": interval_s, "slow_until": until}
            updates |= {"slow_interval_s": interval_s, "slow_until": until}
        statement = (
            self._insert_into(_rates)
            .values(**values)
            .on_conflict_do_update(index_elements=[stored.key], set_=updates)
        )
        resume = datetime.fromtimestamp(not_before, UTC)
        with self.transaction() as session:
            session.execute(statement)
            session.execute(
                update(Job)
                .where(
                    Job.rate_key == key,
                    Job.rate_slot_at.is_not(None),
                    Job.state == JobState.SCHEDULED,
                )
                .values(
                    rate_slot_at=None,
                    run_at=case((Job.run_at > resume, Job.run_at), else_=resume),
                    updated_at=utcnow(),
                )
            )

    def defer(
        self, job_id: str, attempt: int, *, key: str, slot: datetime, until: datetime
    ) -> bool:
        """Send a claimed attempt back to wait (``scheduled`` until ``until``) for its rate
        slot ``slot`` under ``key``, giving the attempt back; False if another worker holds
        the job now (fenced)."""
        params = {
            "b_id": job_id,
            "b_attempt": attempt,
            "b_key": key,
            "b_slot": slot,
            "b_until": until,
            "b_now": utcnow(),
        }
        with self.autocommit() as connection:
            return connection.execute(DEFER, params).first() is not None

    def claim_limited(
        self,
        job_id: str,
        *,
        key: str,
        limit: int,
        lease_s: float,
        worker: str,
        foreign: NewJob,
    ) -> Claim:
        """Claim like :meth:`~worker.ledger.jobs.JobPath.claim`, but only while fewer than
        ``limit`` attempts of ``key`` run on live leases; else park the job (``parked``).

        A job with no row yet (a foreign producer's) is written ``queued`` first and then
        goes through the same gate, so no message runs past the limit.
        """
        now = utcnow()
        params = {
            "b_id": job_id,
            "b_key": key,
            "b_limit": limit,
            "b_now": now,
            "b_lease": now + timedelta(seconds=lease_s),
            "b_worker": worker,
            "b_recheck": now + timedelta(seconds=PARKED_RECHECK_S),
        }
        gated = self._gate(params)
        if gated is not None:
            return gated
        with self.transaction() as session:
            unclaimed = why_unclaimed(session, job_id, now)
            if unclaimed is not None:
                return unclaimed
            # A foreign producer's job: its row first (queued), then the same gate.
            row = self._row(foreign, now, state=JobState.QUEUED, attempts=0)
            inserted = session.execute(
                self._insert().values(**row).on_conflict_do_nothing().returning(Job.id)
            ).first()
        if inserted is None:
            with self.session() as session:
                exists = session.scalar(select(Job.id).where(Job.id == job_id))
            if exists is None:  # its idempotency key belongs to another job: a duplicate
                return Claim(None, JobState.CANCELLED, duplicate=True)
        return self.claim_limited(
            job_id, key=key, limit=limit, lease_s=lease_s, worker=worker, foreign=foreign
        )

    def _gate(self, params: dict[str, Any]) -> Claim | None:
        """The gated claim, else the park, in one transaction: the claim if it took the job,
        ``parked`` if the park did, None if neither did (the job is not claimable).

        On PostgreSQL the three statements go together in one round trip (psycopg's
        pipeline), the first taking a transaction-scoped advisory lock on the key so that
        the gated claims of one key run one after another. SQLite runs one writing
        transaction at a time anyway.
        """
        if self.is_postgresql:
            claimed, parked = self.direct_transaction(
                [(LOCK_KEY, params), _direct_step(GATED_CLAIM, params), _direct_step(PARK, params)]
            )[1:]
        else:
            with self.transaction() as session:
                found = session.execute(GATED_CLAIM, params).first()
                claimed = None if found is None else tuple(found)
                parked = None if claimed else session.execute(PARK, params).first()
        if claimed is not None:
            return claim_of(claimed)
        if parked is not None:
            return Claim(None, JobState.SCHEDULED, parked=True)
        return None

    def release_parked(self, *, limit_per_key: int = 500) -> int:
        """Make the oldest parked jobs of each key due, as many as the key has free slots
        (its limit less its queued and live running jobs); the relay's ``release_due``
        then publishes them. Returns how many were released.

        Runs every relay pass: the common case (no parked job) is one read, on the
        partial index of the unfinished jobs that have a key.
        """
        now = utcnow()
        with self.autocommit() as connection:
            keys = connection.execute(PARKED_KEYS, {"b_now": now}).all()
        released = 0
        if not keys:
            return released
        waiting = (Job.state == JobState.SCHEDULED) & (Job.run_at > now)
        with self.transaction() as session:
            for key, limit, in_use in keys:
                free = min(int(limit or 0) - int(in_use), limit_per_key)
                if free <= 0:
                    continue
                oldest = (
                    select(Job.id)
                    .where(
                        Job.limit_key == key,
                        waiting,
                        or_(Job.rate_slot_at.is_(None), Job.rate_slot_at <= now),
                    )
                    .order_by(Job.created_at, Job.id)
                    .limit(free)
                    .with_for_update(skip_locked=True)
                )
                ids = list(session.scalars(oldest))
                if ids:
                    session.execute(
                        update(Job)
                        .where(and_(Job.id.in_(ids), waiting))
                        .values(run_at=now, updated_at=now)
                    )
                    released += len(ids)
        return released
