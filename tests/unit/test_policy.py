"""The retry policy as tables whose rows show the arithmetic, and as properties.

A job's delay after failed attempt ``n`` is ``rand * min(max_s, base_s * multiplier ** (n-1))``
(full jitter); a :class:`RetryAfter` asks for its own delay, capped by ``max_s``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from conveyor.worker.constants import DeadReason
from conveyor.worker.errors import Fatal, PayloadInvalid, Retryable, RetryAfter
from conveyor.worker.policy import (
    Backoff,
    DeadLetter,
    RandomSource,
    Retry,
    RetryPolicy,
    ScheduleStep,
    decide,
    delay_ceiling_s,
    schedule,
    worst_case_total_s,
)

pytestmark = pytest.mark.unit

FATAL = DeadLetter(DeadReason.FATAL)
EXHAUSTED = DeadLetter(DeadReason.EXHAUSTED)


def constant(value: float) -> RandomSource:
    """A random source that always returns ``value``."""
    return lambda: value


def never_called() -> float:
    raise AssertionError("the random source must not be drawn for this decision")


class Order(BaseModel):
    quantity: int


def schema_error() -> ValidationError:
    try:
        Order.model_validate({"quantity": "many"})
    except ValidationError as exc:
        return exc
    raise AssertionError("the payload should not validate")


# -- the arithmetic --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "base_s", "multiplier", "max_s", "ceiling_s", "rand", "delay_s"),
    [
        # ceiling = min(max_s, base_s * multiplier ** (attempt - 1)); delay = rand * ceiling
        (1, 2, 2, 600, 2, 0.5, 1.0),  # 2 * 2**0 = 2
        (1, 2, 2, 600, 2, 0.0, 0.0),  # full jitter reaches zero
        (2, 2, 2, 600, 4, 1.0, 4.0),  # 2 * 2**1 = 4
        (3, 2, 2, 600, 8, 1.0, 8.0),  # 2 * 2**2 = 8
        (3, 2, 3, 600, 18, 0.5, 9.0),  # 2 * 3**2 = 18
        (5, 5, 2, 600, 80, 0.25, 20.0),  # 5 * 2**4 = 80
        (4, 1, 1, 600, 1, 0.9, 0.9),  # multiplier 1: constant ceiling
        (3, 0, 2, 600, 0, 0.7, 0.0),  # base 0: never waits
        (8, 5, 2, 600, 600, 1.0, 600.0),  # 5 * 2**7 = 640, capped at 600
        (10, 2, 2, 60, 60, 0.5, 30.0),  # 2 * 2**9 = 1024, capped at 60
        (1, 2, 2, 0, 0, 0.5, 0.0),  # cap 0: never waits
        (1, 2, 2, 1.5, 1.5, 0.5, 0.75),  # cap below the first ceiling
    ],
)
def test_delay_is_rand_times_the_capped_exponential_ceiling(
    attempt: int,
    base_s: float,
    multiplier: float,
    max_s: float,
    ceiling_s: float,
    rand: float,
    delay_s: float,
) -> None:
    policy = RetryPolicy(max_attempts=100, backoff=Backoff(base_s, multiplier, max_s))

    assert delay_ceiling_s(policy, attempt) == pytest.approx(ceiling_s)
    decision = decide(attempt, RuntimeError("boom"), policy, constant(rand))
    assert isinstance(decision, Retry)
    assert decision.delay_s == pytest.approx(delay_s)


# -- what dead-letters at once ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "policy", "decision"),
    [
        (Fatal("no"), RetryPolicy(), FATAL),
        (PayloadInvalid("bad payload"), RetryPolicy(), DeadLetter(DeadReason.INVALID_PAYLOAD)),
        (schema_error(), RetryPolicy(), FATAL),
        # Fatal wins over a retry_on that would otherwise match it.
        (Fatal("no"), RetryPolicy(retry_on=(Exception,)), FATAL),
        # extra fatal types, subclasses included; fatal wins over Retryable
        (KeyError("k"), RetryPolicy(fatal=(KeyError,)), FATAL),
        (KeyError("k"), RetryPolicy(fatal=(LookupError,)), FATAL),
        (IndexError(0), RetryPolicy(fatal=(KeyError,)), Retry(1.0)),
        (Retryable("r"), RetryPolicy(fatal=(Retryable,)), FATAL),
        # retry_on narrows: anything else is fatal, Retryable and RetryAfter still retry
        (ConnectionError("c"), RetryPolicy(retry_on=(ConnectionError,)), Retry(1.0)),
        (ConnectionRefusedError("c"), RetryPolicy(retry_on=(ConnectionError,)), Retry(1.0)),
        (ValueError("v"), RetryPolicy(retry_on=(ConnectionError,)), FATAL),
        (Retryable("r"), RetryPolicy(retry_on=(ConnectionError,)), Retry(1.0)),
        (RetryAfter(7), RetryPolicy(retry_on=(ConnectionError,)), Retry(7.0)),
        # without retry_on, any non-fatal error retries
        (ValueError("v"), RetryPolicy(), Retry(1.0)),
        (Retryable("r"), RetryPolicy(), Retry(1.0)),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_classification_on_the_first_attempt(
    error: BaseException, policy: RetryPolicy, decision: Retry | DeadLetter
) -> None:
    # attempt 1, default backoff: ceiling 2 s, rand 0.5, so a plain retry waits 1 s
    assert decide(1, error, policy, constant(0.5)) == decision


# -- exhaustion ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "error", "decision"),
    [
        (4, 5, RuntimeError("x"), Retry(8.0)),  # the last retry: 0.5 * 2 * 2**3
        (5, 5, RuntimeError("x"), EXHAUSTED),
        (6, 5, RuntimeError("x"), EXHAUSTED),
        (1, 1, RuntimeError("x"), EXHAUSTED),
        (5, 5, RetryAfter(1), EXHAUSTED),  # asking for a later retry does not add one
        (5, 5, Retryable("x"), EXHAUSTED),
        (5, 5, Fatal("x"), FATAL),  # the reason stays "fatal" on the last attempt too
    ],
)
def test_the_last_attempt_dead_letters_as_exhausted(
    attempt: int, max_attempts: int, error: BaseException, decision: Retry | DeadLetter
) -> None:
    policy = RetryPolicy(max_attempts=max_attempts)
    assert decide(attempt, error, policy, constant(0.5)) == decision


# -- RetryAfter ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "delay_s", "max_s", "expected_s"),
    [
        (1, 3, 600, 3.0),
        (1, 0, 600, 0.0),
        (1, 2.5, 600, 2.5),
        (1, 30, 600, 30.0),  # above attempt 1's backoff ceiling (2 s): still honoured
        (1, 900, 600, 600.0),  # capped by max_s
        (3, 10, 0, 0.0),
        (1, math.inf, 600, 600.0),
    ],
)
def test_retry_after_is_honoured_and_capped_by_max_s(
    attempt: int, delay_s: float, max_s: float, expected_s: float
) -> None:
    policy = RetryPolicy(max_attempts=10, backoff=Backoff(max_s=max_s))
    assert decide(attempt, RetryAfter(delay_s), policy, never_called) == Retry(expected_s)


@pytest.mark.parametrize("delay_s", [-1, -0.001, -math.inf])
def test_retry_after_rejects_a_negative_delay(delay_s: float) -> None:
    with pytest.raises(ValueError, match="delay_s must be >= 0"):
        RetryAfter(delay_s)


# -- invalid policies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RetryPolicy(max_attempts=0), "max_attempts must be >= 1"),
        (lambda: RetryPolicy(max_attempts=-3), "max_attempts must be >= 1"),
        (lambda: Backoff(multiplier=0.99), "multiplier must be >= 1"),
        (lambda: Backoff(multiplier=0), "multiplier must be >= 1"),
        (lambda: Backoff(base_s=-1), "delays must be >= 0"),
        (lambda: Backoff(max_s=-0.1), "delays must be >= 0"),
    ],
)
def test_invalid_policies_are_refused(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_the_boundary_values_are_valid() -> None:
    policy = RetryPolicy(max_attempts=1, backoff=Backoff(base_s=0, multiplier=1, max_s=0))
    assert (policy.max_attempts, policy.backoff) == (1, Backoff(0, 1, 0))


# -- schedule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "ceilings_s", "total_s"),
    [
        (RetryPolicy(), [2, 4, 8, 16], 30),  # the default: 2+4+8+16
        (RetryPolicy(max_attempts=1), [], 0),
        (RetryPolicy(max_attempts=2, backoff=Backoff(base_s=7)), [7], 7),
        # the webhook policy: 5 * 2**n, capped at 600
        (
            RetryPolicy(max_attempts=8, backoff=Backoff(5, 2, 600)),
            [5, 10, 20, 40, 80, 160, 320],
            635,
        ),
        (RetryPolicy(max_attempts=8, backoff=Backoff(5, 2, 30)), [5, 10, 20, 30, 30, 30, 30], 155),
    ],
)
def test_schedule_lists_every_retry_up_to_its_ceiling(
    policy: RetryPolicy, ceilings_s: list[float], total_s: float
) -> None:
    expected = [ScheduleStep(n, 0.0, ceiling) for n, ceiling in enumerate(ceilings_s, start=1)]
    assert schedule(policy) == expected
    assert worst_case_total_s(policy) == total_s


# -- properties ------------------------------------------------------------------------------

backoffs = st.builds(
    Backoff,
    base_s=st.floats(0, 1e6),
    multiplier=st.floats(1, 1000),
    max_s=st.floats(0, 1e7),
)
short_policies = st.builds(RetryPolicy, max_attempts=st.integers(1, 50), backoff=backoffs)
policies = st.one_of(
    short_policies,
    st.builds(RetryPolicy, max_attempts=st.integers(1, 10**9), backoff=backoffs),
)
attempts = st.one_of(st.integers(1, 100), st.integers(1, 10**9))
rands = st.floats(0, 1, exclude_max=True)
errors = st.one_of(
    st.builds(RuntimeError, st.text(max_size=5)),
    st.builds(Retryable, st.text(max_size=5)),
    st.builds(RetryAfter, st.floats(0, 1e9)),
)


@given(attempt=attempts, error=errors, policy=policies, rand=rands)
def test_a_retry_delay_is_between_zero_and_max_s(
    attempt: int, error: BaseException, policy: RetryPolicy, rand: float
) -> None:
    decision = decide(attempt, error, policy, constant(rand))
    if attempt >= policy.max_attempts:
        assert decision == EXHAUSTED
    else:
        assert isinstance(decision, Retry)
        assert 0 <= decision.delay_s <= policy.backoff.max_s


@given(
    attempt=attempts,
    error=st.sampled_from([RuntimeError("x"), Retryable("x"), OSError("x")]),
    policy=policies,
    rand=rands,
)
def test_a_backoff_delay_never_exceeds_the_ceiling_for_its_attempt(
    attempt: int, error: BaseException, policy: RetryPolicy, rand: float
) -> None:
    decision = decide(attempt, error, policy, constant(rand))
    if isinstance(decision, Retry):
        assert 0 <= decision.delay_s <= delay_ceiling_s(policy, attempt)
    else:
        assert attempt >= policy.max_attempts


@given(policy=policies, attempt=attempts, later=st.integers(0, 10**6))
def test_the_ceiling_is_non_decreasing_and_within_the_cap(
    policy: RetryPolicy, attempt: int, later: int
) -> None:
    here = delay_ceiling_s(policy, attempt)
    assert 0 <= here <= delay_ceiling_s(policy, attempt + later) <= policy.backoff.max_s
    assert math.isfinite(here)


@given(policy=short_policies)
def test_the_schedule_has_a_step_per_retry(policy: RetryPolicy) -> None:
    steps = schedule(policy)
    assert [step.attempt for step in steps] == list(range(1, policy.max_attempts))
    assert all(step.min_delay_s == 0 for step in steps)
    assert [step.max_delay_s for step in steps] == [
        delay_ceiling_s(policy, step.attempt) for step in steps
    ]
    assert worst_case_total_s(policy) == pytest.approx(sum(s.max_delay_s for s in steps))


@pytest.mark.parametrize(
    "multiplier",
    [
        2,
        1000,
        1e5,
    ],
)
def test_a_huge_attempt_number_is_capped_not_an_overflow(multiplier: float) -> None:
    policy = RetryPolicy(max_attempts=10**7, backoff=Backoff(2, multiplier, 600))
    assert delay_ceiling_s(policy, 10**6) == 600
    assert decide(10**6, RuntimeError("x"), policy, constant(0.5)) == Retry(300.0)
