"""The API's request and response bodies, with the examples the OpenAPI document shows.

Response models mirror :func:`worker.operations.views.job_view` and
:func:`worker.operations.dlq.dead_letter_view` (the CLI's ``--json`` shapes; the dead
letters' bodies are in :mod:`worker.api.dead_letter_schemas`) and allow extra fields,
so a field added there reaches API clients too. Request models refuse unknown fields and
any value the ledger could not store (NUL characters, non-finite numbers, integers beyond
64 bits: :func:`worker.admission.storable`, the rule every producer shares), so such input
is a 422, never a database error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    model_validator,
)

from conveyor.worker.admission import storable
from conveyor.worker.models import JobState

if TYPE_CHECKING:
    from conveyor.worker.client import JobRequest

NO_NUL: Final = r"^[^\x00]*$"
QUEUE_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
MAX_DELAY_S: Final = 366 * 86_400
MAX_EXPIRES_S: Final = MAX_DELAY_S
MAX_BATCH: Final = 10_000
"""The most ``CONVEYOR_API_MAX_BATCH`` may allow; the setting is checked by the route."""
MAX_PAYLOAD_DEPTH: Final = 500
"""The deepest ``CONVEYOR_MAX_PAYLOAD_DEPTH`` may allow."""
IDEMPOTENCY_KEY_PATTERN: Final = r"^[\x20-\x7e]+$"

TaskName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
QueueName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=QUEUE_PATTERN)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=NO_NUL)]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


def iso_only(value: Any) -> Any:
    """Refuse numbers: times are ISO 8601 strings here, never Unix timestamps."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
    elif isinstance(value, datetime):
        return value
    raise ValueError("give an ISO 8601 time, such as 2026-11-30T10:00:00Z")


def as_utc(value: datetime) -> datetime:
    """Naive times are UTC; aware ones are converted to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range in UTC") from None


UtcDatetime = Annotated[datetime, Strict(False), BeforeValidator(iso_only), AfterValidator(as_utc)]
"""A time in ISO 8601 (UTC when no zone is given); strict models still parse it from text."""


def _storable_payload(value: dict[str, Any]) -> dict[str, Any]:
    # The depth the settings allow at most: the configured one is the client's check.
    storable(value, max_depth=MAX_PAYLOAD_DEPTH)
    return value


Payload = Annotated[dict[str, Any], AfterValidator(_storable_payload)]
"""A job's payload, refused as a body error when the ledger could not store it (the rule of
every producer, :func:`worker.admission.storable`); its schema is judged by ``enqueue``."""


class JobCreate(BaseModel):
    """A job to enqueue."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"task": "demo.work", "payload": {"n": 3}},
                {
                    "task": "webhooks.deliver",
                    "payload": {"url": "https://example.com/hook", "body": {"order": 1}},
                    "queue": "webhooks",
                    "delay_s": 30,
                    "priority": 5,
                },
            ]
        },
    )

    task: TaskName = Field(description="A registered job name.")
    payload: Payload = Field(description="The job's input: a JSON object (its schema's shape).")
    queue: QueueName | None = Field(None, description="Queue to use instead of the job's own.")
    delay_s: float | None = Field(
        None, ge=0, le=MAX_DELAY_S, allow_inf_nan=False, description="Run no sooner than this."
    )
    priority: int | None = Field(
        None,
        ge=0,
        le=9,
        description="0 to 9, 9 first; none counts as 0. Honoured on queues declared with "
        "priorities (CONVEYOR_QUEUES), first in first out elsewhere.",
    )
    expires_in_s: float | None = Field(
        None,
        gt=0,
        le=MAX_EXPIRES_S,
        allow_inf_nan=False,
        description="Deadline, seconds from now: not started by then, the job ends "
        "`cancelled` (`cancel_reason` `expired`) without running. Not with `expires_at`.",
    )
    expires_at: UtcDatetime | None = Field(
        None,
        description="Deadline as a time (ISO 8601, UTC when no zone is given; must be in "
        "the future): as `expires_in_s`. Not with `expires_in_s`.",
    )

    @model_validator(mode="after")
    def _one_deadline(self) -> JobCreate:
        if self.expires_in_s is not None and self.expires_at is not None:
            raise ValueError("give expires_in_s or expires_at, not both")
        return self


IdempotencyKey = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=IDEMPOTENCY_KEY_PATTERN)
]


class BatchJob(JobCreate):
    """One job of a batch: a job to enqueue, with its own idempotency key if it has one."""

    idempotency_key: IdempotencyKey | None = Field(
        None,
        description="As the `Idempotency-Key` header of `POST /v1/jobs`, for this job alone.",
    )

    def request(self) -> JobRequest:
        """This job as :func:`~worker.client.enqueue_many` takes it."""
        from conveyor.worker.client import JobRequest

        return JobRequest(
            self.task,
            self.payload,
            idempotency_key=self.idempotency_key,
            queue=self.queue,
            delay=self.delay_s,
            priority=self.priority,
            expires_in=self.expires_in_s,
            expires_at=self.expires_at,
        )


class JobBatch(BaseModel):
    """Jobs to enqueue together, in one statement and one wait for the broker."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "jobs": [
                        {"task": "demo.work", "payload": {"n": 1}},
                        {"task": "demo.work", "payload": {"n": 2}, "idempotency_key": "n-2"},
                    ]
                }
            ]
        },
    )

    jobs: list[BatchJob] = Field(min_length=1, max_length=MAX_BATCH)


class BatchItem(BaseModel):
    """What became of one job of a batch: accepted (202), or refused with a problem."""

    status: int = Field(examples=[202, 422], description="202, or the problem's status.")
    id: str | None = Field(None, description="The job's id; an existing job's for a reused key.")
    state: JobState | None = None
    problem: dict[str, Any] | None = Field(
        None, description="Why this job was refused: an RFC 9457 problem, as `POST /v1/jobs`."
    )


class BatchAccepted(BaseModel):
    """One item per job of the batch, in order; the counts of each outcome."""

    accepted: int
    refused: int
    items: list[BatchItem]


class JobAccepted(BaseModel):
    """The job's id and state right after it was accepted."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"id": "0b5c6f0e-8d0c-4e59-9d7a-0d6f3c1f2a4b", "state": "queued"}]
        }
    )

    id: str
    state: JobState


class JobError(BaseModel):
    type: str
    message: str | None
    reason: str | None


class JobProgress(BaseModel):
    """The job's last ``ctx.progress(done, total, note)``."""

    done: int
    total: int
    note: str | None
    at: Timestamp | None


class JobView(BaseModel):
    """One job (the shape of ``conveyor jobs show --json``)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "id": "0b5c6f0e-8d0c-4e59-9d7a-0d6f3c1f2a4b",
                    "task": "demo.work",
                    "queue": "default",
                    "state": "succeeded",
                    "attempts": 1,
                    "max_attempts": 5,
                    "idempotency_key": "order-1",
                    "priority": None,
                    "payload": {"n": 3},
                    "result": {"n": 3},
                    "error": None,
                    "created_at": "2026-11-30T10:00:00.000000+00:00",
                    "updated_at": "2026-11-30T10:00:00.120000+00:00",
                    "run_at": None,
                    "started_at": "2026-11-30T10:00:00.010000+00:00",
                    "finished_at": "2026-11-30T10:00:00.120000+00:00",
                }
            ]
        },
    )

    id: str
    task: str
    queue: str
    state: JobState
    attempts: int
    max_attempts: int
    idempotency_key: str | None
    priority: int | None
    payload: dict[str, Any]
    result: Any
    error: JobError | None
    created_at: Timestamp
    updated_at: Timestamp
    run_at: Timestamp | None
    started_at: Timestamp | None
    finished_at: Timestamp | None
    expires_at: Timestamp | None = Field(None, description="The deadline, if it has one.")
    cancel_reason: str | None = Field(
        None, description="Why a cancelled job was: `expired` (its deadline passed), or null."
    )
    progress: JobProgress | None = Field(
        None, description="What the job last reported with `ctx.progress`, or null."
    )


class JobPage(BaseModel):
    """One page of jobs, newest first; pass ``next_cursor`` back as ``cursor`` for more."""

    items: list[JobView]
    next_cursor: str | None = Field(description="Null on the last page.")


class QueueStats(BaseModel):
    name: str
    depth: int = Field(description="Jobs waiting in state queued.")
    running: int
    scheduled: int = Field(description="Delayed jobs and jobs waiting for a retry.")
    dead: int = Field(description="Dead letters not yet replayed.")
    oldest_queued_age_s: float | None = Field(
        description="How long the longest-waiting queued job has been queued."
    )
    paused: bool = Field(description="Paused: no worker starts its jobs until it is resumed.")


class QueuesView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "queues": [
                        {
                            "name": "default",
                            "depth": 12,
                            "running": 2,
                            "scheduled": 3,
                            "dead": 1,
                            "oldest_queued_age_s": 0.8,
                            "paused": False,
                        }
                    ],
                    "relay_lag_s": 0.0,
                }
            ]
        }
    )

    queues: list[QueueStats]
    relay_lag_s: float = Field(
        description="Age of the oldest scheduled job whose time has come (0 when none waits)."
    )


class PauseView(BaseModel):
    queue: str
    paused: bool = Field(description="Whether the queue is paused now.")
    changed: bool = Field(description="False when it was paused (or not paused) already.")


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    checks: dict[str, str] = Field(examples=[{"ledger": "ok", "broker": "ok"}])


class DeclaredJobView(BaseModel):
    """One job type as a worker declared it (the shape of ``conveyor jobs catalog --json``)."""

    model_config = ConfigDict(extra="allow")

    name: str
    queue: str | None
    payload_schema: dict[str, Any] | None
    max_attempts: int
    backoff: dict[str, Any]
    timeout_s: float
    version: str
    declared_by: str
    declared_at: Timestamp


class CatalogView(BaseModel):
    """Every job type the workers declared, by name."""

    items: list[DeclaredJobView]
