"""Jobs for ``conveyor demo``: each one succeeds, fails a few times first, or never succeeds.

Their backoff is short so the demo finishes in seconds; real jobs use the defaults.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from conveyor import Backoff, Fatal, JobContext, job

DEMO_MAX_ATTEMPTS = 4


class DemoWork(BaseModel):
    """Payload of ``demo.work``: how this one job will behave."""

    n: int = Field(ge=0)
    fail_times: int = Field(0, ge=0, description="fail this many attempts, then succeed")
    always_fail: bool = Field(False, description="fail every attempt (ends dead, exhausted)")
    fatal: bool = Field(False, description="fail with Fatal (dead at once)")
    work_ms: int = Field(20, ge=0, le=10_000)


class TransientError(Exception):
    """A failure that passes if the job tries again (the demo's flaky dependency)."""


@job(
    name="demo.work",
    max_attempts=DEMO_MAX_ATTEMPTS,
    backoff=Backoff(base_s=0.25, multiplier=2, max_s=1.0),
    timeout_s=30,
    schema=DemoWork,
)
def work(ctx: JobContext, task: DemoWork) -> dict[str, Any]:
    """Sleep ``work_ms``, then fail or succeed as the payload says."""
    time.sleep(task.work_ms / 1000)
    if task.fatal:
        raise Fatal(f"job {task.n} cannot succeed (bad input)")
    if task.always_fail or ctx.attempt <= task.fail_times:
        raise TransientError(f"job {task.n}: upstream unavailable (attempt {ctx.attempt})")
    return {"n": task.n, "square": task.n * task.n, "attempt": ctx.attempt}
