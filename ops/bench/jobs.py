"""The Conveyor side of the throughput benchmark: one job that does nothing.

Loaded by workers with ``CONVEYOR_TASK_MODULES=ops.bench.jobs``. Every guarantee still
applies: the job is claimed in the ledger, runs inside ``ctx.session``'s transaction and
is marked ``succeeded`` in that same transaction before its message is acknowledged.
"""

from __future__ import annotations

from typing import Any

from conveyor import JobContext, job


@job(name="bench.noop")
def noop(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Do nothing; the platform's own work is what is being measured."""


@job(name="bench.rated", rate_limit="1000000/s", rate_key=lambda p: p["key"])
def rated(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Do nothing under a rate limit per key too high to wait on: what its check costs."""


@job(name="bench.limited", concurrency=1_000_000, concurrency_key=lambda p: p["key"])
def limited(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Do nothing under a concurrency limit per key too high to park: its gated claim."""


@job(
    name="bench.both",
    rate_limit="1000000/s",
    rate_key=lambda p: p["key"],
    concurrency=1_000_000,
    concurrency_key=lambda p: p["key"],
)
def both(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Do nothing under both limits."""
