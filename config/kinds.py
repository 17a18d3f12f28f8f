"""The value types of the settings: broker and log kinds, queue types, one queue's spec.

Kept apart from :mod:`config.settings` (which re-exports them) so that the settings
module stays one object and its checks.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class BrokerKind(StrEnum):
    """Which transport family a broker URL selects; decides broker-specific options."""

    REDIS = "redis"
    RABBITMQ = "rabbitmq"
    EMBEDDED = "embedded"


class LogFormat(StrEnum):
    """How log lines are written."""

    JSON = "json"
    TEXT = "text"


class QueueType(StrEnum):
    """RabbitMQ queue type for Conveyor's queues (ignored on other brokers)."""

    CLASSIC = "classic"
    QUORUM = "quorum"


class QueueSpec(BaseModel):
    """One queue as ``CONVEYOR_QUEUES`` declares it (every field optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: QueueType | None = Field(
        None, description="RabbitMQ: classic or quorum; unset: CONVEYOR_QUEUE_TYPE."
    )
    priority: bool = Field(
        False,
        description="Honour job priorities (0 to 9, 9 first). RabbitMQ: declared with "
        "x-max-priority; on Redis every queue has priorities.",
    )
    prefetch: int | None = Field(
        None,
        gt=0,
        le=64,
        description="Messages each worker process reserves ahead: more for short jobs, 1 for "
        "long ones; unset: CONVEYOR_PREFETCH_MULTIPLIER.",
    )


UNDECLARED = QueueSpec()
"""What a queue that ``CONVEYOR_QUEUES`` does not name gets: every default."""
