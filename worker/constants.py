"""Names, suffixes and prefixes shared across Conveyor, in one place."""

from __future__ import annotations

from typing import Final

DEAD_LETTER_SUFFIX: Final = ".dead"
"""Queue ``Q``'s dead letters live in ``Q + DEAD_LETTER_SUFFIX``."""

IDEMPOTENCY_HEADER: Final = "idempotency_key"
"""Message header carrying a job's idempotency key (foreign producers may set it)."""

LEASE_S: Final = 10.0
"""How long a claim on a running job lasts unless renewed. A vanished worker's jobs are
recovered by the relay at most this long (plus one relay poll) after its last heartbeat."""

HEARTBEAT_EVERY_S: Final = 3.0
"""How often a worker process renews the leases of the jobs it is running."""

RELAY_POLL_S: Final = 0.25
"""How often the relay looks for due retries and expired leases."""

RELAY_BATCH: Final = 500
"""Most rows the relay takes in one transaction."""

HARD_LIMIT_GRACE_S: Final = 5
"""Seconds between a job's soft time limit (``timeout_s``) and its hard limit."""


def dead_letter_queue(queue: str) -> str:
    """Name of the dead-letter queue that belongs to ``queue``."""
    return f"{queue}{DEAD_LETTER_SUFFIX}"


INVALID_MESSAGE = "invalid_message"
"""Dead-letter reason of a message that can never become a job (see :mod:`worker.poison`)."""
