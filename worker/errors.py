"""Conveyor's one exception hierarchy, grouped by what the handler must do.

- :class:`Retryable` and its children: the attempt failed, retry per the job's policy.
- :class:`Fatal` and its children: dead-letter at once, no retries.
- :class:`UsageError` and its children: a caller (CLI, client, config) made a mistake;
  report one clear line, never a traceback.
- :class:`Ended` and its children: the job's outcome is in the ledger already; end the
  Celery task so that Flower shows it (never an error of Conveyor's).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

# The root of the hierarchy sits in the bottom layer, so that `config` imports nothing from here.
from conveyor.config.errors import ConfigError as ConfigError
from conveyor.config.errors import ConveyorError as ConveyorError
from conveyor.config.errors import UsageError as UsageError
from conveyor.worker.observability.masking import mask

# -- raised inside jobs -------------------------------------------------------------------------


class Retryable(ConveyorError):
    """The attempt failed for a reason that may pass; the policy decides when to retry."""


class RetryAfter(Retryable):
    """Retry at a known time, e.g. honouring an HTTP ``Retry-After`` header.

    The delay is still capped by the job's policy, and still counts as an attempt.

    For a job with a ``rate_limit``, it also holds back the other jobs of its rate key:
    none starts before ``delay_s`` from now, and with ``limit`` (``"10/m"``) their starts
    are spaced at that slower rate for ``for_s`` seconds (a 429 from the service they
    call). Without a rate limit, ``limit`` has no effect.
    """

    def __init__(
        self,
        delay_s: float,
        message: str = "",
        *,
        limit: str | None = None,
        for_s: float = 300.0,
    ) -> None:
        if delay_s < 0:
            raise ValueError("RetryAfter delay_s must be >= 0")
        if for_s <= 0:
            raise ValueError("RetryAfter for_s must be > 0")
        from conveyor.worker.limits import RateLimit  # here: limits imports errors

        self.delay_s = float(delay_s)
        self.slow_interval_s = None if limit is None else RateLimit.parse(limit).interval_s
        """The slower spacing of the key's starts while ``for_s`` lasts, if ``limit``."""
        self.for_s = float(for_s)
        super().__init__(message or f"retry requested in {self.delay_s:g}s")


class Fatal(ConveyorError):
    """The job cannot succeed: dead-letter it now, without retries."""


class PayloadInvalid(Fatal):
    """The payload does not match the job's schema (a poison message)."""

    @classmethod
    def at(cls, task: str, where: str, detail: str) -> PayloadInvalid:
        """The one wording of a schema error, whichever validator found it."""
        return cls(f"payload for {task!r} is invalid at {where or 'payload'}: {detail}")


class PoisonMessage(Fatal):
    """A message that cannot become a job: not an envelope, or no task header."""


# -- raised to callers ---------------------------------------------------------------------------


class UnknownTask(UsageError):
    """No job is registered under that name."""


class JobNotFound(UsageError):
    """No job in the ledger has that id."""


class EnqueueError(ConveyorError):
    """The job could not be handed to the broker; nothing was left half-made."""


class LeaseLost(Exception):
    """Another worker took this job over while it ran; this attempt's effects are discarded."""


class WorkerLost(Retryable):
    """An attempt ended with its worker process (killed, or past its hard time limit)."""


# -- how a worker's Celery task ends when the job did not succeed -------------------------------


class Ended(Exception):
    """The attempt did not succeed, and the ledger already has its outcome.

    Raised by :meth:`worker.runtime.Runtime.attempt` so that the Celery task ends the way
    Flower should show it (:mod:`worker.app` turns each kind into Celery's ending; the table
    in :mod:`worker.runtime`). The message names the error's type and the outcome, never
    the error's message, which may quote the payload: Celery copies it into the task's
    events, its log and the task's span.
    One string argument only, so it pickles across the prefork pool.
    """


class RetryScheduled(Ended):
    """The job waits in the ledger (``scheduled``) for its next attempt: Flower's RETRY."""


class Deferred(RetryScheduled):
    """A limit held the job back before it started: it waits in the ledger (``scheduled``)
    with no attempt used, for its rate slot or a free concurrency slot (Flower's RETRY)."""


class DeadLettered(Ended):
    """The job is dead-lettered (ledger, then ``Q.dead``): the Celery task fails (FAILURE)."""


class Redundant(Ended):
    """This delivery changed nothing (skipped duplicate, lease lost): no outcome to show."""


LEASE_LOST = "lease lost: another worker took the job over"
""":class:`Redundant`'s message for an attempt fenced out by another worker's claim."""


# -- what the ledger records of an error --------------------------------------------------------


def error_type_of(error: BaseException) -> str:
    """The one format of ``error_type`` everywhere: ``module.QualName``."""
    return f"{type(error).__module__}.{type(error).__qualname__}"


@dataclass(frozen=True, slots=True)
class Failure:
    """What an attempt raised, as the ledger records it."""

    error_type: str
    message: str
    traceback: str | None = None


def failure_of(error: BaseException, message: str | None = None) -> Failure:
    """``error`` as the ledger keeps it: type, message (or ``message``), traceback, capped,
    with secrets masked (a library's error may quote the URL it was given, password and all):
    from the ledger they reach ``conveyor dlq``, the API, the console and Sentry."""
    formatted = mask("".join(traceback.format_exception(error)))[-16000:]
    return Failure(
        error_type=error_type_of(error),
        message=storable_text(mask(str(error) if message is None else message)[:4000]),
        traceback=storable_text(formatted),
    )


def storable_text(text: str) -> str:
    """``text`` without what PostgreSQL's text columns refuse: NUL characters and lone
    surrogates (not UTF-8; a message's names and errors may hold them), each escaped."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


WORKER_LOST = error_type_of(WorkerLost())
"""``error_type`` of an attempt that ended with its worker process."""
