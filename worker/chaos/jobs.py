"""The chaos job type, loaded by a chaos run's own workers (``CONVEYOR_TASK_MODULES``).

Each attempt writes its effect through ``ctx.session`` first and works afterwards, so a
kill lands between the effect and the acknowledgement as often as possible: if effects
are exactly-once here, they are exactly-once anywhere.
"""

from __future__ import annotations

import time
from typing import Any

from conveyor import Fatal, JobContext, RetryAfter, job
from conveyor.worker.chaos.effects import effects
from conveyor.worker.chaos.plan import CHAOS_MAX_ATTEMPTS, CHAOS_POLICY, CHAOS_TASK, fails
from conveyor.worker.errors import Retryable

CHAOS_TIMEOUT_S = 2.0


class ChaosFailure(Retryable):
    """A planned, retryable failure."""


@job(
    name=CHAOS_TASK,
    queue="chaos",
    max_attempts=CHAOS_MAX_ATTEMPTS,
    backoff=CHAOS_POLICY.backoff,
    timeout_s=CHAOS_TIMEOUT_S,
)
def work(ctx: JobContext, payload: dict[str, Any]) -> dict[str, int]:
    """Fail, overrun, ask for a later retry or succeed, as the run's plan says."""
    seed, n = int(payload["seed"]), int(payload["n"])
    if payload.get("fatal"):
        raise Fatal(f"chaos job {n} is planned to fail for good")
    if ctx.attempt == 1 and payload.get("retry_after_s"):
        raise RetryAfter(float(payload["retry_after_s"]))
    if ctx.attempt == 1 and payload.get("overrun"):
        time.sleep(CHAOS_TIMEOUT_S + 1)  # the soft time limit interrupts this
    if fails(seed, n, ctx.attempt, float(payload.get("fail_p", 0))):
        raise ChaosFailure(f"chaos job {n} fails attempt {ctx.attempt} as planned")
    ctx.session.execute(
        effects.insert().values(run_id=payload["run"], job_id=ctx.job_id, attempt=ctx.attempt)
    )
    time.sleep(int(payload.get("sleep_ms", 0)) / 1000)
    return {"n": n, "attempt": ctx.attempt}
