"""Names, suffixes and prefixes shared across Conveyor, in one place."""

from __future__ import annotations

from typing import Final

DEAD_LETTER_SUFFIX: Final = ".dead"
"""Queue ``Q``'s dead letters live in ``Q + DEAD_LETTER_SUFFIX``."""

IDEMPOTENCY_HEADER: Final = "idempotency_key"
"""Message header carrying a job's idempotency key (foreign producers may set it)."""

LEASE_GRACE_S: Final = 30
"""Seconds a running job's lease outlives its hard time limit."""

HARD_LIMIT_GRACE_S: Final = 5
"""Seconds between a job's soft time limit (``timeout_s``) and its hard limit."""


def dead_letter_queue(queue: str) -> str:
    """Name of the dead-letter queue that belongs to ``queue``."""
    return f"{queue}{DEAD_LETTER_SUFFIX}"
