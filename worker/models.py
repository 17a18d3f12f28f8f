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

    __table_args__ = (
        Index("ix_conveyor_jobs_state_queue", "state", "queue"),
        Index("ix_conveyor_jobs_task_created", "task", "created_at"),
        Index("ix_conveyor_jobs_created_id", "created_at", "id"),
        Index("ix_conveyor_jobs_state_run_at", "state", "run_at"),
        Index("ix_conveyor_jobs_state_lease", "state", "lease_expires_at"),
        Index("ix_conveyor_jobs_replay_of", "replay_of"),
        Index("ix_conveyor_jobs_state_finished", "state", "finished_at"),
    )


class JobAttempt(Base):
    """A failed attempt: when it ran, what it raised, and how long the job then waited.

    Successful attempts are not written here: the job row's ``started_at`` and
    ``finished_at`` describe them, which keeps the success path to one write.
    """

    __tablename__ = "conveyor_job_attempts"

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
