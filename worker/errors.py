"""Conveyor's one exception hierarchy, grouped by what the handler must do.

- :class:`Retryable` and its children: the attempt failed, retry per the job's policy.
- :class:`Fatal` and its children: dead-letter at once, no retries.
- :class:`UsageError` and its children: a caller (CLI, client, config) made a mistake;
  report one clear line, never a traceback.
"""

from __future__ import annotations


class ConveyorError(Exception):
    """Root of every error Conveyor raises on purpose."""


# -- raised inside jobs -------------------------------------------------------------------------


class Retryable(ConveyorError):
    """The attempt failed for a reason that may pass; the policy decides when to retry."""


class RetryAfter(Retryable):
    """Retry at a known time, e.g. honouring an HTTP ``Retry-After`` header.

    The delay is still capped by the job's policy, and still counts as an attempt.
    """

    def __init__(self, delay_s: float, message: str = "") -> None:
        if delay_s < 0:
            raise ValueError("RetryAfter delay_s must be >= 0")
        self.delay_s = float(delay_s)
        super().__init__(message or f"retry requested in {self.delay_s:g}s")


class Fatal(ConveyorError):
    """The job cannot succeed: dead-letter it now, without retries."""


class PayloadInvalid(Fatal):
    """The payload does not match the job's schema (a poison message)."""


# -- raised to callers ---------------------------------------------------------------------------


class UsageError(ConveyorError):
    """A caller's mistake, reported as one line."""


class ConfigError(UsageError):
    """The settings are invalid; the message names the ``CONVEYOR_*`` variable."""


class UnknownTask(UsageError):
    """No job is registered under that name."""


class JobNotFound(UsageError):
    """No job in the ledger has that id."""


class EnqueueError(ConveyorError):
    """The job could not be handed to the broker; nothing was left half-made."""


class WorkerLost(Retryable):
    """An attempt ended with its worker process (killed, or past its hard time limit)."""
