"""Names, suffixes and prefixes shared across Conveyor, in one place."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

DEAD_LETTER_SUFFIX: Final = ".dead"
"""Queue ``Q``'s dead letters live in ``Q + DEAD_LETTER_SUFFIX``."""

IDEMPOTENCY_HEADER: Final = "idempotency_key"
"""Message header carrying a job's idempotency key (foreign producers may set it)."""

LEASE_S: Final = 10.0
"""The default of ``CONVEYOR_JOB_LEASE_S``: how long a claim on a running job lasts unless
renewed. A vanished worker's jobs are recovered by the relay at most this long (plus one
relay poll) after its last heartbeat."""

HEARTBEAT_EVERY_S: Final = 3.0
"""How often a worker process renews the leases of the jobs it is running, with the default
lease; another lease is renewed as often in proportion (:func:`worker.heartbeat.beat_every_s`)."""

RELAY_POLL_S: Final = 0.25
"""How often the relay looks for due retries and expired leases."""

LEADER_LEASE_S: Final = 5.0
"""How long the relay's leader holds the duty unless it renews it (:mod:`worker.leader`):
a leader that dies or is cut off is replaced at most this long (plus a renewal) later."""

LEADER_RENEW_S: Final = 1.0
"""How often the leader renews, and how often the others try to take the duty."""

CELERY_QUEUE: Final = "celery"
"""The queue a Celery producer that names none publishes to (Celery's default queue). A
worker that consumes Conveyor's default queue consumes this one too."""

PAUSE_POLL_S: Final = 1.0
"""How often a worker reads the paused queues from the ledger: a pause or a resume takes
effect on every worker within about this long."""

MAX_PRIORITY: Final = 9
"""Job priorities run from 0 to this, higher first, on every broker (config.celery maps them
onto each broker's own scale)."""

RELAY_BATCH: Final = 500
"""Most rows the relay takes in one transaction."""


def dead_letter_queue(queue: str) -> str:
    """Name of the dead-letter queue that belongs to ``queue``."""
    return f"{queue}{DEAD_LETTER_SUFFIX}"


class DeadReason(StrEnum):
    """Why a job was dead-lettered: the one list used by the policy, the poison consumer,
    the ledger, the CLI's and the API's filters, and the metrics' ``reason`` label."""

    FATAL = "fatal"
    """The job raised :class:`~worker.errors.Fatal` (or a type its policy lists as fatal)."""
    EXHAUSTED = "exhausted"
    """The last attempt failed, or earlier attempts died with their worker."""
    INVALID_PAYLOAD = "invalid_payload"
    """The payload does not match the job's schema, or came as positional arguments."""
    INVALID_MESSAGE = "invalid_message"
    """A message the ledger cannot store (an id too long, a NUL character)."""
    UNDECODABLE = "undecodable"
    """A body that is not a message envelope, or not valid in its declared encoding."""
    NOT_A_TASK = "not_a_task"
    """A decodable message with no task header."""
    UNKNOWN_TASK = "unknown_task"
    """A task name no worker has registered."""
    CONTENT_TYPE = "content_type"
    """A serializer other than JSON (pickle, YAML, msgpack): never deserialized."""
    TOO_LARGE = "too_large"
    """A message larger than ``CONVEYOR_MAX_PAYLOAD_BYTES`` allows: never decoded."""

    @property
    def is_poison(self) -> bool:
        """Whether the message never became an attempt of a job (no retry was possible)."""
        return self not in (DeadReason.FATAL, DeadReason.EXHAUSTED, DeadReason.INVALID_PAYLOAD)
