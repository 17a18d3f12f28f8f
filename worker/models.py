"""The ledger's tables: the source of truth for every job's state.

The broker moves work; the ledger says what happened to it. Schema changes go
through Alembic migrations under ``worker/migrations`` (``conveyor migrate``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class JobState(StrEnum):
    """A job's state. ``succeeded``, ``dead`` and ``cancelled`` are terminal."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every database (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


JSONDocument = JSON().with_variant(JSONB(), "postgresql")
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def partial_index(predicate: str) -> dict[str, Any]:
    """An index's ``WHERE``, on PostgreSQL and SQLite alike (migration 0010 builds the same)."""
    return {"postgresql_where": text(predicate), "sqlite_where": text(predicate)}


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSONDocument,
    }


class Job(Base):
    """One job: what to run, where, and everything that happened to it so far."""

    __tablename__ = "conveyor_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    headers: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    priority: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[Any | None] = mapped_column(JSONDocument)
    error_type: Mapped[str | None] = mapped_column(String(255))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_traceback: Mapped[str | None] = mapped_column(Text)
    dead_reason: Mapped[str | None] = mapped_column(String(32))
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    run_at: Mapped[datetime | None] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    replay_of: Mapped[str | None] = mapped_column(String(64))
    """The dead job this one replays."""
    replayed_as: Mapped[str | None] = mapped_column(String(64))
    """Set on a dead job once it was replayed: the id of the new job."""
    traceparent: Mapped[str | None] = mapped_column(String(64))
    """W3C trace context of the enqueue (tracing on): the relay publishes the job in it."""
    tracestate: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None] = mapped_column()
    """The deadline given at enqueue: not started by then, the job is cancelled unrun."""
    cancel_reason: Mapped[str | None] = mapped_column(String(32))
    """Why a ``cancelled`` job was: ``expired`` for a passed deadline, else None."""
    progress_done: Mapped[int | None] = mapped_column(Integer)
    """The running job's last ``ctx.progress``: done of total, a note, and when."""
    progress_total: Mapped[int | None] = mapped_column(Integer)
    progress_note: Mapped[str | None] = mapped_column(String(200))
    progress_at: Mapped[datetime | None] = mapped_column()
    limit_key: Mapped[str | None] = mapped_column(String(255))
    """The concurrency key (``task:value``) the job was claimed or parked under
    (:mod:`worker.limits`); ``limit_max`` is that key's limit, for the relay's release."""
    limit_max: Mapped[int | None] = mapped_column(Integer)
    rate_slot_at: Mapped[datetime | None] = mapped_column()
    """The start slot a rate-limited job reserved and waits for (state ``scheduled``)."""
    rate_key: Mapped[str | None] = mapped_column(String(255))
    """The rate limit's key of a job holding a slot (a ``RetryAfter`` moves them all)."""

    # As migration 0010 left them (its docstring and docs/console.md say why): full
    # indexes for the lists' filters, partial ones where only a few rows need an entry.
    __table_args__ = (
        Index("ix_conveyor_jobs_created_id", "created_at", "id"),
        Index("ix_conveyor_jobs_task_created", "task", "created_at"),
        Index("ix_conveyor_jobs_state_created", "state", "created_at", "id"),
        Index("ix_conveyor_jobs_queue_created", "queue", "created_at", "id"),
        Index(
            "ix_conveyor_jobs_payload",
            "payload",
            postgresql_using="gin",
            postgresql_ops={"payload": "jsonb_path_ops"},
        ).ddl_if(dialect="postgresql"),
        Index(
            "ix_conveyor_jobs_open",
            "queue",
            "state",
            "updated_at",
            **partial_index(
                "state IN ('queued', 'running', 'scheduled') "
                "OR (state = 'dead' AND replayed_as IS NULL)"
            ),
        ),
        Index(
            "ix_conveyor_jobs_due",
            "run_at",
            **partial_index("state = 'scheduled'"),
        ),
        Index(
            "ix_conveyor_jobs_leases",
            "lease_expires_at",
            **partial_index("state = 'running'"),
        ),
        Index(
            "ix_conveyor_jobs_finished",
            "state",
            "finished_at",
            **partial_index("finished_at IS NOT NULL"),
        ),
        Index(
            "ix_conveyor_jobs_dead_letters",
            "finished_at",
            "id",
            postgresql_include=["task", "error_type", "queue"],
            **partial_index("state = 'dead' AND replayed_as IS NULL"),
        ),
        Index(
            "ix_conveyor_jobs_replays",
            "replay_of",
            **partial_index("replay_of IS NOT NULL"),
        ),
        Index(
            "ix_conveyor_jobs_limit_key",
            "limit_key",
            "state",
            "lease_expires_at",
            **partial_index(
                "limit_key IS NOT NULL AND state IN ('queued', 'scheduled', 'running')"
            ),
        ),
        Index(
            "ix_conveyor_jobs_rate_waiting", "rate_key", **partial_index("rate_slot_at IS NOT NULL")
        ),
    )


class JobAttempt(Base):
    """A failed attempt: when it ran, what it raised, and how long the job then waited.

    Successful attempts are not written here: the job row's ``started_at`` and
    ``finished_at`` describe them, which keeps the success path to one write.
    """

    __tablename__ = "conveyor_job_attempts"
    __table_args__ = (Index("ix_conveyor_job_attempts_outcome_finished", "outcome", "finished_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("conveyor_jobs.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)
    delay_s: Mapped[float | None] = mapped_column(Float)
    error_type: Mapped[str | None] = mapped_column(String(255))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_traceback: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))
    """The worker that ran the attempt (``hostname``, as Celery names it)."""


class AuditEntry(Base):
    """Who replayed or purged which dead letters, when, and how many."""

    __tablename__ = "conveyor_audit"
    __table_args__ = (Index("ix_conveyor_audit_at", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(32))
    filters: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    job_ids: Mapped[list[str]] = mapped_column(JSONDocument)
    count: Mapped[int] = mapped_column(Integer)


class ConsoleSession(Base):
    """One signed-in console user (:mod:`worker.console.access`). The cookie holds a random
    token; only its SHA-256 is kept, so a leaked ledger opens no session. Deleting the row
    (logging out, or expiry) ends the session at once in every API process."""

    __tablename__ = "conveyor_console_sessions"
    __table_args__ = (Index("ix_conveyor_console_sessions_expires", "expires_at"),)

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    actor: Mapped[str] = mapped_column(String(255))
    """Who, as audit entries name them: ``apikey:<name>`` or ``user:<name>``."""
    role: Mapped[str] = mapped_column(String(16))
    csrf_token: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(36))
    """The API key signed in with, if any: revoking it ends the session."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class ApiKey(Base):
    """One API key: its name, public prefix, token hash and scopes."""

    __tablename__ = "conveyor_api_keys"
    __table_args__ = (Index("ix_conveyor_api_keys_prefix", "prefix", unique=True),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class DeclaredJob(Base):
    """One job type as a worker declared it: the catalog producers validate against when
    they do not import the job's module (:mod:`worker.catalog`)."""

    __tablename__ = "conveyor_job_catalog"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    queue: Mapped[str | None] = mapped_column(String(200))
    payload_schema: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    """The payload's JSON Schema (pydantic's), or None for a job that takes any object."""
    max_attempts: Mapped[int] = mapped_column(Integer)
    backoff: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    timeout_s: Mapped[float] = mapped_column(Float)
    version: Mapped[str] = mapped_column(String(64))
    """The Conveyor version of the worker that declared it last."""
    declared_by: Mapped[str] = mapped_column(String(255))
    declared_at: Mapped[datetime] = mapped_column(default=utcnow)


class QueuePause(Base):
    """A paused queue: while its row exists no worker starts a job of that queue
    (:mod:`worker.pauses`); its jobs wait on the broker and in the ledger as ``queued``."""

    __tablename__ = "conveyor_queue_pauses"

    queue: Mapped[str] = mapped_column(String(200), primary_key=True)
    paused_at: Mapped[datetime] = mapped_column(default=utcnow)
    paused_by: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(String(500))


class Lease(Base):
    """A duty that one process at a time holds, until ``expires_at`` unless renewed
    (:mod:`worker.leader`): today the relay's. ``term`` grows by one at every change of
    holder, so a log line or a metric says which tenure acted."""

    __tablename__ = "conveyor_leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    term: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime] = mapped_column()
    acquired_at: Mapped[datetime] = mapped_column(default=utcnow)


class Schedule(Base):
    """One periodic job (:mod:`worker.schedules`): its definition as the relay last synced
    it from code and settings, and where its ticks stand."""

    __tablename__ = "conveyor_schedules"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    task: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[str] = mapped_column(String(300))
    """The schedule as text: ``every 300s`` or ``cron 0 * * * * Europe/Berlin``, and its
    policies."""
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    paused: Mapped[bool] = mapped_column(default=False)
    last_tick_at: Mapped[datetime | None] = mapped_column()
    """The latest tick handled: enqueued, or skipped by a policy."""
    next_tick_at: Mapped[datetime | None] = mapped_column()
    last_job_id: Mapped[str | None] = mapped_column(String(64))
    last_outcome: Mapped[str | None] = mapped_column(String(32))
    """What became of the latest tick: enqueued, skipped_overlap, missed, paused, manual."""
    synced_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RateLimit(Base):
    """The shared state of one rate-limited job or key (:mod:`worker.limits`): the next
    free start slot, and a slower interval a ``RetryAfter`` set until ``slow_until``; the
    times are Unix seconds, so one portable statement reserves a slot."""

    __tablename__ = "conveyor_rate_limits"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    next_at: Mapped[float] = mapped_column(Float)
    slow_interval_s: Mapped[float | None] = mapped_column(Float)
    slow_until: Mapped[float | None] = mapped_column(Float)
