"""The retry policy: a pure function from (attempt, error, policy, random source) to a decision.

A job's life through retries:

1. Attempt ``n`` raises. :func:`decide` classifies the error.
2. :class:`~worker.errors.Fatal` (or a type the job lists as fatal, or a schema error)
   means **dead-letter now**: retrying cannot help.
3. Anything else is retryable. If ``n`` already is the job's last attempt, the job is
   **dead-lettered as exhausted**.
4. Otherwise the job **retries** after a delay drawn with full jitter from
   ``[0, min(max_s, base_s * multiplier ** (n - 1))]``; a
   :class:`~worker.errors.RetryAfter` asks for its own delay, still capped by ``max_s``.

Nothing here touches a broker, a clock or a database, so the whole schedule can be
tested as a table and with properties.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from conveyor.worker.constants import DeadReason
from conveyor.worker.errors import Fatal, PayloadInvalid, Retryable, RetryAfter

RandomSource = Callable[[], float]
"""Returns a float in [0, 1); ``random.random`` in production, a constant in tests."""

DEFAULT_FATAL: tuple[type[BaseException], ...] = (Fatal, ValidationError)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: the n-th retry waits up to ``base_s * multiplier ** (n - 1)``,
    never more than ``max_s``. Full jitter draws the actual wait from ``[0, that bound]``.
    """

    base_s: float = 2.0
    multiplier: float = 2.0
    max_s: float = 600.0

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.max_s < 0:
            raise ValueError("backoff delays must be >= 0")
        if self.multiplier < 1:
            raise ValueError("backoff multiplier must be >= 1")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a job retries. The default: 5 attempts, waits of up to 2, 4, 8 and 16 s (30 s).

    ``fatal`` lists extra exception types that dead-letter at once for this job;
    ``retry_on`` narrows which exceptions retry (empty: every non-fatal exception);
    :class:`~worker.errors.Retryable` errors always retry.
    """

    max_attempts: int = 5
    backoff: Backoff = field(default_factory=Backoff)
    fatal: tuple[type[BaseException], ...] = ()
    retry_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")


@dataclass(frozen=True, slots=True)
class Retry:
    """Run the job again after ``delay_s`` seconds."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Stop: dead-letter the job. ``reason`` is ``invalid_payload``, ``fatal`` or ``exhausted``."""

    reason: DeadReason


Decision = Retry | DeadLetter


def delay_ceiling_s(policy: RetryPolicy, attempt: int) -> float:
    """Upper bound of the delay after failed attempt ``attempt`` (1-based)."""
    backoff = policy.backoff
    exponent = max(attempt - 1, 0)
    try:
        raw = backoff.base_s * backoff.multiplier**exponent
    except OverflowError:  # far past the cap for any multiplier > 1
        return backoff.max_s
    return min(raw, backoff.max_s)


def is_fatal(policy: RetryPolicy, error: BaseException) -> bool:
    """Whether ``error`` dead-letters at once under ``policy``."""
    if isinstance(error, DEFAULT_FATAL + policy.fatal):
        return True
    return bool(policy.retry_on) and not isinstance(error, (*policy.retry_on, Retryable))


def decide(
    attempt: int,
    error: BaseException,
    policy: RetryPolicy,
    rand: RandomSource = random.random,
) -> Decision:
    """Decide what happens after attempt ``attempt`` (1-based) failed with ``error``."""
    if isinstance(error, PayloadInvalid):
        return DeadLetter(DeadReason.INVALID_PAYLOAD)
    if is_fatal(policy, error):
        return DeadLetter(DeadReason.FATAL)
    if attempt >= policy.max_attempts:
        return DeadLetter(DeadReason.EXHAUSTED)
    if isinstance(error, RetryAfter):
        return Retry(min(error.delay_s, policy.backoff.max_s))
    return Retry(rand() * delay_ceiling_s(policy, attempt))


@dataclass(frozen=True, slots=True)
class ScheduleStep:
    """One retry in a policy's schedule: after ``attempt`` fails, wait within the bounds."""

    attempt: int
    min_delay_s: float
    max_delay_s: float


def schedule(policy: RetryPolicy) -> list[ScheduleStep]:
    """Every retry a job can go through before it is dead-lettered as exhausted."""
    return [
        ScheduleStep(attempt, 0.0, delay_ceiling_s(policy, attempt))
        for attempt in range(1, policy.max_attempts)
    ]


def worst_case_total_s(policy: RetryPolicy) -> float:
    """Longest total wait, over all retries, before the job is dead-lettered."""
    return sum(step.max_delay_s for step in schedule(policy))
