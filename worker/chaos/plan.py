"""What each chaos job will do, and so how it must end: a pure function of the seed.

A job's behaviour on each attempt is decided by a hash of (seed, job number, attempt), so a
worker that runs attempt 3 of job 17 makes the same choice as the planner did, without any
shared state. The planner replays those choices to know the expected end of every job.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from conveyor.worker.policy import Backoff, RetryPolicy, delay_ceiling_s

CHAOS_TASK = "chaos.work"
CHAOS_MAX_ATTEMPTS = 8
CHAOS_POLICY = RetryPolicy(max_attempts=CHAOS_MAX_ATTEMPTS, backoff=Backoff(0.2, 2.0, 2.0))
"""Short waits so a run finishes in seconds; many attempts so faults alone never exhaust a job."""


def roll(seed: int, n: int, attempt: int, salt: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, job, attempt, salt)."""
    digest = hashlib.blake2b(f"{seed}:{n}:{attempt}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True, slots=True)
class JobPlan:
    """One chaos job: its payload and how it must end."""

    n: int
    payload: dict[str, Any]
    expect: str  # "succeeded" or "dead"
    reason: str | None = None  # the dead reason when expect == "dead"


@dataclass(frozen=True, slots=True)
class Mix:
    """The share of each kind of job in a run (the rest simply succeed)."""

    fail_p: float = 0.0  # each attempt fails with this probability
    fatal: float = 0.0  # share of jobs that raise Fatal
    retry_after: float = 0.0  # share that ask for RetryAfter on their first attempt
    timeout: float = 0.0  # share that overrun their soft time limit on the first attempt
    sleep_ms: tuple[int, int] = (20, 120)
    extra: dict[str, Any] = field(default_factory=dict)


def fails(seed: int, n: int, attempt: int, fail_p: float) -> bool:
    """Whether attempt ``attempt`` of job ``n`` fails on purpose."""
    return fail_p > 0 and roll(seed, n, attempt, "fail") < fail_p


def plan_jobs(seed: int, count: int, mix: Mix) -> list[JobPlan]:
    """The seeded jobs of a run, each with its expected end."""
    rng = random.Random(seed)
    plans = []
    for n in range(count):
        payload: dict[str, Any] = {
            "seed": seed,
            "n": n,
            "sleep_ms": rng.randint(*mix.sleep_ms),
            "fail_p": mix.fail_p,
            **mix.extra,
        }
        kind = rng.random()
        if kind < mix.fatal:
            payload["fatal"] = True
            plans.append(JobPlan(n, payload, "dead", "fatal"))
            continue
        if kind < mix.fatal + mix.retry_after:
            payload["retry_after_s"] = round(rng.uniform(0.2, 1.5), 2)
        elif kind < mix.fatal + mix.retry_after + mix.timeout:
            payload["overrun"] = True
        # The job succeeds on the first attempt that neither fails on purpose nor is its
        # deliberately failing first attempt (retry_after or overrun).
        first_special = 1 if ("retry_after_s" in payload or "overrun" in payload) else 0
        succeeds = any(
            attempt > first_special and not fails(seed, n, attempt, mix.fail_p)
            for attempt in range(1, CHAOS_MAX_ATTEMPTS + 1)
        )
        plans.append(
            JobPlan(
                n, payload, "succeeded" if succeeds else "dead", None if succeeds else "exhausted"
            )
        )
    return plans


def max_delay_s(attempt: int, retry_after_s: float | None) -> float:
    """The longest wait the policy allows after failed attempt ``attempt``."""
    ceiling = delay_ceiling_s(CHAOS_POLICY, attempt)
    if retry_after_s is not None and attempt == 1:
        return max(ceiling, min(retry_after_s, CHAOS_POLICY.backoff.max_s))
    return ceiling
