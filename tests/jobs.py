"""Jobs used only by the tests, loaded with ``CONVEYOR_TASK_MODULES=tests.jobs``.

``test.count`` writes its effect through ``ctx.session`` first and works afterwards, which
widens the window between the effect and the acknowledgement where a kill could cause a
duplicate: if effects are exactly-once here, they are exactly-once anywhere.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel, Field
from sqlalchemy import Column, Integer, MetaData, String, Table, select, text, update

from conveyor import Backoff, Fatal, JobContext, RetryAfter, job
from conveyor.tasks import demo, webhooks  # noqa: F401  (the reference jobs: tests use them too)

metadata = MetaData()

counters = Table(
    "conveyor_test_counters",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("value", Integer, nullable=False),
)

effects = Table(
    "conveyor_test_effects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
)


@job(name="test.count", max_attempts=5, backoff=Backoff(base_s=0.1, max_s=0.5))
def count(ctx: JobContext, payload: dict[str, Any]) -> int:
    """Add 1 to counter ``payload['counter']`` and record the effect, then sleep."""
    ctx.session.execute(
        update(counters)
        .where(counters.c.name == payload["counter"])
        .values(value=counters.c.value + 1)
    )
    ctx.session.execute(effects.insert().values(job_id=ctx.job_id, attempt=ctx.attempt))
    time.sleep(payload.get("sleep_ms", 0) / 1000)
    return ctx.attempt


@job(name="test.crash", max_attempts=2, timeout_s=30)
def crash(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Kill the worker process running this job, every time."""
    os.kill(os.getpid(), signal.SIGKILL)


@job(name="test.sleep", max_attempts=3, timeout_s=60)
def sleep(ctx: JobContext, payload: dict[str, Any]) -> int:
    """Sleep ``payload['s']`` seconds; returns the attempt that finished."""
    time.sleep(float(payload["s"]))
    return ctx.attempt


@job(name="test.retry_after", max_attempts=3, backoff=Backoff(base_s=0.1, max_s=30))
def retry_after(ctx: JobContext, payload: dict[str, Any]) -> int:
    """Ask for a retry in ``payload['delay_s']`` for the first ``fail_times`` attempts."""
    if ctx.attempt <= payload.get("fail_times", 1):
        raise RetryAfter(float(payload["delay_s"]))
    return ctx.attempt


@job(name="test.gated", max_attempts=2, backoff=Backoff(base_s=0.1, max_s=0.2))
def gated(ctx: JobContext, payload: dict[str, Any]) -> str:
    """Fail (fatally if ``payload['fatal']``) while counter ``payload['gate']`` is 0."""
    value = ctx.session.scalar(select(counters.c.value).where(counters.c.name == payload["gate"]))
    if not value:
        if payload.get("fatal"):
            raise Fatal(f"gate {payload['gate']} is closed")
        raise RuntimeError(f"gate {payload['gate']} is closed")
    return "open"


@job(name="test.slow", max_attempts=2, timeout_s=1, backoff=Backoff(base_s=0.1, max_s=0.2))
def slow(ctx: JobContext, payload: dict[str, Any]) -> int:
    """Sleep past the 1 s soft time limit; with ``stubborn``, ignore it and hit the hard one."""
    deadline = time.monotonic() + float(payload["s"])
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            if not payload.get("stubborn"):
                raise
    return ctx.attempt


@job(name="test.loud_fatal", max_attempts=1, log_payload=True)
def loud_fatal(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Fail at once, quoting ``payload['value']``: a job that allows its payload in Sentry."""
    raise Fatal(f"refused {payload['value']}")


@job(name="test.bad_sql", max_attempts=2, backoff=Backoff(base_s=0.1, max_s=0.2))
def bad_sql(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Run a statement the database refuses (division by zero): the job's own error."""
    ctx.session.execute(text("SELECT 1 / 0"))


class Typed(BaseModel):
    count: int = Field(ge=0)
    label: str = "x"


@job(name="test.typed", max_attempts=3, schema=Typed)
def typed(ctx: JobContext, payload: Typed) -> int:
    """Return ``count`` doubled: a job with a schema, for the catalog's tests."""
    return payload.count * 2


@job(name="test.rated", max_attempts=2, rate_limit="3/s", rate_key=lambda p: p["key"])
def rated(ctx: JobContext, payload: dict[str, Any]) -> float:
    """At most 3 starts a second per ``payload['key']``, fleet-wide; returns when it
    started (Unix seconds)."""
    return time.time()


@job(name="test.rated_minute", max_attempts=2, rate_limit="100/m", rate_key=lambda p: p["key"])
def rated_minute(ctx: JobContext, payload: dict[str, Any]) -> float:
    """At most 100 starts a minute per ``payload['key']`` (the full-size rate test); returns
    when it started (Unix seconds)."""
    return time.time()


@job(
    name="test.rated_429",
    max_attempts=3,
    backoff=Backoff(base_s=0.1, max_s=30),
    rate_limit="20/s",
    rate_key=lambda p: p["key"],
)
def rated_429(ctx: JobContext, payload: dict[str, Any]) -> int:
    """With ``throttle``, answer the first attempt as a 429 would: ``RetryAfter``, slowing
    the key to ``payload['limit']`` for a while."""
    if payload.get("throttle") and ctx.attempt == 1:
        raise RetryAfter(float(payload["delay_s"]), limit=payload.get("limit"), for_s=60)
    return ctx.attempt


@job(
    name="test.limited",
    max_attempts=3,
    timeout_s=120,
    concurrency=2,
    concurrency_key=lambda p: p["key"],
)
def limited(ctx: JobContext, payload: dict[str, Any]) -> int:
    """At most 2 running at once per ``payload['key']``; sleeps ``payload['s']`` seconds
    (only on the first attempt with ``first_only``)."""
    if not payload.get("first_only") or ctx.attempt == 1:
        time.sleep(float(payload.get("s", 0)))
    return ctx.attempt


@job(
    name="test.single",
    max_attempts=3,
    timeout_s=120,
    concurrency=1,
    concurrency_key=lambda p: p["key"],
)
def single(ctx: JobContext, payload: dict[str, Any]) -> int:
    """One at a time per ``payload['key']``; sleeps ``payload['s']`` on the first attempt."""
    if ctx.attempt == 1:
        time.sleep(float(payload.get("s", 0)))
    return ctx.attempt
