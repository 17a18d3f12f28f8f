"""The dead-letter routes' request and response bodies (:mod:`worker.api.dead_letters`).

Split from :mod:`worker.api.schemas` (whose rules they follow): the response models
mirror :func:`worker.operations.dlq.dead_letter_view` and allow extra fields; the
selections refuse unknown fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from conveyor.worker.api.schemas import Text, Timestamp, UtcDatetime
from conveyor.worker.constants import DeadReason


class DeadLetterSummary(BaseModel):
    """One dead job in a list (the shape of ``conveyor dlq list --json``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    task: str
    queue: str
    reason: str | None
    error_type: str | None
    error_message: str | None
    attempts: int
    dead_at: Timestamp | None
    created_at: Timestamp
    idempotency_key: str | None
    replay_of: str | None
    payload: dict[str, Any]


class DeadLetterView(DeadLetterSummary):
    """One dead job with its traceback (``conveyor dlq show --json``)."""

    traceback: str | None


class DeadLetterList(BaseModel):
    items: list[DeadLetterSummary]


class DeadLetterSelection(BaseModel):
    """Which dead letters a bulk operation applies to. An empty filter needs ``all``."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {"queue": "webhooks", "error_type": "httpx.ConnectError", "dry_run": True},
                {"all": True},
            ]
        },
    )

    ids: list[Text] = Field(default_factory=list, max_length=10_000)
    queue: Text | None = None
    task: Text | None = None
    error_type: Text | None = Field(None, description="module.QualName")
    reason: DeadReason | None = Field(None, description="Why it was dead-lettered.")
    since: UtcDatetime | None = Field(None, description="Dead at or after this time.")
    until: UtcDatetime | None = Field(None, description="Dead before this time.")
    every: bool = Field(False, alias="all", description="Required to select with no filter.")
    dry_run: bool = Field(False, description="Say what would be done; change nothing.")


class ReplaySelection(DeadLetterSelection):
    rate_per_s: float | None = Field(
        None, gt=0, le=10_000, allow_inf_nan=False, description="Spread the replays out."
    )


class Outcome(BaseModel):
    """What a replay or purge did (or, with ``dry_run``, would do)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "action": "replay",
                    "dry_run": False,
                    "count": 1,
                    "job_ids": ["0b5c6f0e-8d0c-4e59-9d7a-0d6f3c1f2a4b"],
                    "new_ids": ["5f1d2c3b-7e8a-4b9c-8d0e-1f2a3b4c5d6e"],
                    "skipped": {},
                    "removed_from_broker": 1,
                }
            ]
        }
    )

    action: str
    dry_run: bool
    count: int
    job_ids: list[str]
    new_ids: list[str]
    skipped: dict[str, str] = Field(description="Dead jobs left alone, and why.")
    removed_from_broker: int
