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
