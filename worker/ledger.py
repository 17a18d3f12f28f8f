"""Reads and writes of the ledger, each state change in one round trip where it can be.

One :class:`Ledger` per process holds a pooled engine. Celery's prefork pool forks
worker processes after start-up, so the engine is created lazily and re-created when
the process id changes: a child never reuses its parent's connections.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from worker.errors import WorkerLost
from worker.models import Job, JobAttempt, JobState, JSONDocument, UTCDateTime, utcnow

CLAIMABLE = (JobState.QUEUED, JobState.SCHEDULED)
WORKER_LOST = f"{WorkerLost.__module__}.{WorkerLost.__qualname__}"

Publish = Callable[[Job], None]
"""Hands one job's message to the broker; raises if the broker did not take it."""

# The two statements on every job's path, built once: constructing SQLAlchemy statements
# per call cost more CPU than the database round trips they make.
_jobs = cast(Table, Job.__table__)
_now = bindparam("b_now", type_=UTCDateTime())
CLAIM = (
    update(_jobs)
    .where(
        _jobs.c.id == bindparam("b_id"),
        _jobs.c.state.in_([state.value for state in CLAIMABLE])
        | ((_jobs.c.state == JobState.RUNNING.value) & (_jobs.c.lease_expires_at < _now)),
    )
    .values(
        state=JobState.RUNNING.value,
        attempts=_jobs.c.attempts + 1,
        started_at=_now,
        updated_at=_now,
        lease_expires_at=bindparam("b_lease", type_=UTCDateTime()),
        worker=bindparam("b_worker"),
    )
    .returning(_jobs.c.attempts, _jobs.c.idempotency_key)
)
SUCCEED = (
    update(_jobs)
    .where(
        _jobs.c.id == bindparam("b_id"),
        _jobs.c.state == JobState.RUNNING.value,
        _jobs.c.attempts == bindparam("b_attempt"),
    )
    .values(
        state=JobState.SUCCEEDED.value,
        result=bindparam("b_result", type_=JSONDocument),
        finished_at=_now,
        updated_at=_now,
        lease_expires_at=None,
        error_type=None,
        error_message=None,
        error_traceback=None,
    )
    .returning(_jobs.c.id)
)


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job about to be written by a producer."""

    id: str
    task: str
    queue: str
    payload: dict[str, Any]
    max_attempts: int
    idempotency_key: str | None = None
    priority: int | None = None
    run_at: datetime | None = None
    traceparent: str | None = None
    """W3C trace context of the enqueue (see :mod:`worker.tracing`); None when tracing is off."""
    tracestate: str | None = None


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


@dataclass(frozen=True, slots=True)
class Failure:
    """What an attempt raised, as the ledger records it."""

    error_type: str
    message: str
    traceback: str | None = None


def _configure_sqlite(engine: Engine) -> None:
    """WAL, a busy timeout and ``BEGIN IMMEDIATE``, so concurrent writers queue, not fail."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """A pooled engine for ``url``; SQLite files get their parent folder created."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    # No pre-ping: it would add a round trip (and a transaction) to every checkout. A dead
    # connection fails its statement instead, the pool discards it, and the message is
    # retried (see worker.runtime.Postpone); pool_recycle retires idle connections.
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)


class Ledger:
    """The ledger of one database, safe to share between threads of one process."""

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self.url = url
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is None or self._pid != os.getpid():
                    self._engine = make_engine(self.url, pool_size=self._pool_size)
                    self._sessions = sessionmaker(self._engine, expire_on_commit=False)
                    self._pid = os.getpid()
        return self._engine

    def session(self) -> Session:
        """A new session; the caller commits or rolls back."""
        _ = self.engine
        assert self._sessions is not None
        return self._sessions()

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection whose every statement commits on its own (PostgreSQL: no BEGIN)."""
        engine = self.engine
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                yield connection
        else:
            with engine.begin() as connection:
                yield connection

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self.session() as session, session.begin():
            yield session

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @staticmethod
    def _row(job: NewJob, now: datetime, **fields: Any) -> dict[str, Any]:
        """Column values for a new row from ``job``; ``fields`` set its state and the rest."""
        return {
            "id": job.id,
            "task": job.task,
            "queue": job.queue,
            "max_attempts": job.max_attempts,
            "idempotency_key": job.idempotency_key,
            "payload": job.payload,
            "priority": job.priority,
            "traceparent": job.traceparent,
            "tracestate": job.tracestate,
            "created_at": now,
            "updated_at": now,
            **fields,
        }

    def _insert(self) -> Any:
        if self.engine.dialect.name == "postgresql":
            return postgresql.insert(Job)
        return sqlite.insert(Job)

    # -- producers -------------------------------------------------------------------------------

    def create(
        self,
        job: NewJob,
        *,
        window_s: float | None = None,
        session: Session | None = None,
    ) -> tuple[str, bool]:
        """Write a new job; returns ``(id, created)``.

        With an idempotency key that a job created within ``window_s`` already holds,
        nothing is written and that job's id comes back with ``created=False``; a key
        older than the window is taken from its old job and given to the new one. With
        ``session``, the row is written in the caller's transaction (the outbox): it exists
        only if the caller commits.
        """
        if session is not None:
            return self._create(session, job, window_s)
        with self.transaction() as own:
            return self._create(own, job, window_s)

    def _create(self, session: Session, job: NewJob, window_s: float | None) -> tuple[str, bool]:
        now = utcnow()
        statement = self._insert().values(
            **self._row(
                job,
                now,
                state=JobState.SCHEDULED if job.run_at else JobState.QUEUED,
                attempts=0,
                run_at=job.run_at,
            )
        )
        if job.idempotency_key is None:
            session.execute(statement)
            return job.id, True
        statement = statement.on_conflict_do_nothing(index_elements=["idempotency_key"])
        inserted = session.execute(statement.returning(Job.id)).scalar_one_or_none()
        if inserted is not None:
            return inserted, True
        holder = session.execute(
            select(Job.id, Job.created_at).where(Job.idempotency_key == job.idempotency_key)
        ).one()
        if window_s is None or holder.created_at >= now - timedelta(seconds=window_s):
            return holder.id, False
        # The key's window has passed: it now names the new job.
        session.execute(update(Job).where(Job.id == holder.id).values(idempotency_key=None))
        session.execute(statement)
        return job.id, True

    def cancel(self, job_id: str) -> bool:
        """Mark a ``queued`` or ``scheduled`` job ``cancelled``; False if it was in neither."""
        now = utcnow()
        with self.transaction() as session:
            cancelled = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state.in_(CLAIMABLE))
                .values(state=JobState.CANCELLED, finished_at=now, updated_at=now, run_at=None)
                .returning(Job.id)
            ).scalar_one_or_none()
        return cancelled is not None

    def delete(self, job_id: str) -> None:
        """Remove a job that was never handed to the broker (a failed enqueue)."""
        with self.transaction() as session:
            session.execute(delete(Job).where(Job.id == job_id))

    # -- workers ---------------------------------------------------------------------------------

    def claim(
        self,
        job_id: str,
        *,
        lease_s: float,
        worker: str,
        foreign: NewJob,
    ) -> Claim:
        """Take the job for one attempt, if nobody else holds it and it is not finished.

        One UPDATE in the common case. A job with no row (sent by a foreign producer)
        is inserted from ``foreign`` and claimed in the same statement.
        """
        now = utcnow()
        lease_expires = now + timedelta(seconds=lease_s)
        params = {"b_id": job_id, "b_now": now, "b_lease": lease_expires, "b_worker": worker}
        # One statement, committed on its own (one round trip on PostgreSQL).
        with self.autocommit() as connection:
            claimed = connection.execute(CLAIM, params).one_or_none()
        if claimed is not None:
            return Claim(claimed.attempts, JobState.RUNNING, 0.0, claimed.idempotency_key)
        with self.transaction() as session:
            row = session.execute(
                select(Job.state, Job.lease_expires_at).where(Job.id == job_id)
            ).one_or_none()
            if row is None:
                return self._claim_foreign(session, foreign, now, lease_expires, worker)
            state, expires = JobState(row.state), row.lease_expires_at
            busy_for_s = (expires - now).total_seconds() if expires is not None else 0.0
            return Claim(None, state, max(busy_for_s, 0.0))

    def _claim_foreign(
        self, session: Session, job: NewJob, now: datetime, lease: datetime, worker: str
    ) -> Claim:
        statement = (
            self._insert()
            .values(
                **self._row(
                    job,
                    now,
                    state=JobState.RUNNING,
                    attempts=1,
                    started_at=now,
                    lease_expires_at=lease,
                    worker=worker,
                )
            )
            .on_conflict_do_nothing()
        )
        inserted = session.execute(statement.returning(Job.id)).scalar_one_or_none()
        if inserted is not None:
            return Claim(1, JobState.RUNNING, 0.0, job.idempotency_key)
        state = session.execute(select(Job.state).where(Job.id == job.id)).scalar_one_or_none()
        if state is None:  # the idempotency key belongs to another job: a duplicate message
            return Claim(None, JobState.CANCELLED, duplicate=True)
        # Another worker inserted the row first: wait for its lease, then look again.
        return Claim(None, JobState(state), lease_s_left(lease, now))

    def succeed(self, session: Session, job_id: str, attempt: int, result: Any) -> bool:
        """Mark the attempt succeeded inside ``session``'s transaction; the caller commits.

        The ``attempts`` check fences out a worker whose lease was taken over: if it
        returns False, the caller must roll back so the job's effects are discarded.
        """
        params = {"b_id": job_id, "b_attempt": attempt, "b_result": result, "b_now": utcnow()}
        return session.execute(SUCCEED, params).first() is not None

    def fail(
        self,
        job_id: str,
        attempt: int,
        failure: Failure,
        *,
        retry_in_s: float | None,
        dead_reason: str | None = None,
        ran: bool = True,
    ) -> bool:
        """Record a failed attempt: scheduled for a retry, or dead. Returns False if fenced.

        ``ran=False`` is for a claim that found the attempts already used up by crashes:
        the job is dead, and the claim is taken back rather than counted as an attempt.
        """
        now = utcnow()
        if retry_in_s is not None:
            state, run_at, finished = JobState.SCHEDULED, now + timedelta(seconds=retry_in_s), None
        else:
            state, run_at, finished = JobState.DEAD, None, now
        with self.transaction() as session:
            started = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.attempts == attempt)
                .values(
                    state=state,
                    run_at=run_at,
                    finished_at=finished,
                    updated_at=now,
                    lease_expires_at=None,
                    error_type=failure.error_type,
                    error_message=failure.message,
                    error_traceback=failure.traceback,
                    dead_reason=dead_reason,
                    attempts=Job.attempts - (0 if ran else 1),
                )
                .returning(Job.started_at)
            ).scalar_one_or_none()
            if started is None:  # another worker took the job over: not ours to record
                return False
            if not ran:
                return True
            session.execute(
                insert(JobAttempt).values(
                    job_id=job_id,
                    attempt=attempt,
                    outcome=state,
                    started_at=started,
                    finished_at=now,
                    delay_s=retry_in_s,
                    error_type=failure.error_type,
                    error_message=failure.message,
                )
            )
        return True

    def renew(self, running: dict[str, int], *, lease_s: float) -> None:
        """Extend the leases of ``{job_id: attempt}`` still held by those attempts."""
        expires = utcnow() + timedelta(seconds=lease_s)
        with self.transaction() as session:
            for job_id, attempt in running.items():
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.attempts == attempt)
                    .values(lease_expires_at=expires)
                )

    # -- the relay -------------------------------------------------------------------------------

    def release_due(self, publish: Publish, *, limit: int) -> int:
        """Publish scheduled jobs whose time has come and mark them ``queued``.

        Rows are locked with ``SKIP LOCKED``, so several relays never publish the same row
        in one pass. The publish happens before the commit: a relay that dies in between
        leaves the rows scheduled and they are published again (the claim drops the extra
        message), so nothing is lost.
        """
        now = utcnow()
        with self.transaction() as session:
            rows = session.scalars(
                select(Job)
                .where(Job.state == JobState.SCHEDULED, Job.run_at <= now)
                .order_by(Job.run_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                publish(row)
                row.state, row.run_at, row.updated_at = JobState.QUEUED, None, now
            return len(rows)

    def recover_expired(self, publish: Publish, *, limit: int) -> int:
        """Put back running jobs whose lease expired (their worker vanished).

        The lost attempt is recorded (outcome ``lost``) and still counts: a job that kills
        its worker every time is dead-lettered after its last attempt.
        """
        now = utcnow()
        with self.transaction() as session:
            rows = session.scalars(
                select(Job)
                .where(Job.state == JobState.RUNNING, Job.lease_expires_at < now)
                .order_by(Job.lease_expires_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                publish(row)
                session.add(
                    JobAttempt(
                        job_id=row.id,
                        attempt=row.attempts,
                        outcome="lost",
                        started_at=row.started_at,
                        finished_at=now,
                        error_type=WORKER_LOST,
                        error_message=f"lease expired at {row.lease_expires_at:%H:%M:%S}Z "
                        f"on {row.worker}",
                    )
                )
                row.state, row.lease_expires_at, row.updated_at = JobState.QUEUED, None, now
            return len(rows)

    def bury(self, job: NewJob, failure: Failure, reason: str) -> None:
        """Record a poison message as a dead job, whether or not it had a row before."""
        now = utcnow()
        dead = {
            "state": JobState.DEAD,
            "dead_reason": reason,
            "error_type": failure.error_type,
            "error_message": failure.message,
            "error_traceback": failure.traceback,
            "finished_at": now,
            "updated_at": now,
        }
        with self.transaction() as session:
            inserted = session.execute(
                self._insert()
                .values(**self._row(job, now, attempts=0, **dead))
                .on_conflict_do_nothing()
                .returning(Job.id)
            ).scalar_one_or_none()
            if inserted is None:
                session.execute(
                    update(Job)
                    .where(Job.id == job.id, Job.state.not_in([s.value for s in TERMINAL]))
                    .values(**dead)
                )

    def stranded_queues(self, *, stale_s: float) -> list[str]:
        """Queues holding ``queued`` jobs untouched for ``stale_s`` (their message may be gone)."""
        cutoff = utcnow() - timedelta(seconds=stale_s)
        with self.session() as session:
            return list(
                session.scalars(
                    select(Job.queue)
                    .where(Job.state == JobState.QUEUED, Job.updated_at < cutoff)
                    .distinct()
                )
            )

    def republish_stranded(
        self, queue: str, publish: Publish, *, stale_s: float, limit: int
    ) -> int:
        """Publish again the stale ``queued`` jobs of ``queue``; call only when it is empty.

        A ``queued`` job has a message somewhere: in the queue, or reserved by a worker that
        claims it within seconds. When the queue is empty and the job has waited longer
        than ``stale_s``, its message was lost with a connection (a Redis worker's reserved
        messages wait out the visibility timeout) or never published (a producer died after
        writing the row). The copy this publishes is harmless if the old one turns up: the
        claim lets only one of them run.
        """
        now = utcnow()
        with self.transaction() as session:
            rows = session.scalars(
                select(Job)
                .where(
                    Job.state == JobState.QUEUED,
                    Job.queue == queue,
                    Job.updated_at < now - timedelta(seconds=stale_s),
                )
                .order_by(Job.updated_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                publish(row)
                row.updated_at = now
            return len(rows)

    # -- readers ---------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self.session() as session:
            return session.get(Job, job_id)

    def attempts(self, job_id: str) -> Sequence[JobAttempt]:
        with self.session() as session:
            return session.scalars(
                select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.attempt)
            ).all()

    def list(
        self,
        *,
        state: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        limit: int = 50,
    ) -> Sequence[Job]:
        """Newest jobs first, filtered by any of state, task and queue."""
        query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        if state is not None:
            query = query.where(Job.state == state)
        if task is not None:
            query = query.where(Job.task == task)
        if queue is not None:
            query = query.where(Job.queue == queue)
        with self.session() as session:
            return session.scalars(query).all()

    def count_by_state(self, *, ids: Sequence[str] | None = None) -> dict[str, int]:
        query = select(Job.state, func.count()).group_by(Job.state)
        if ids is not None:
            query = query.where(Job.id.in_(ids))
        with self.session() as session:
            return {state: count for state, count in session.execute(query)}


TERMINAL = (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)


def lease_s_left(lease: datetime, now: datetime) -> float:
    return max((lease - now).total_seconds(), 0.0)
