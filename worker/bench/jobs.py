"""The Conveyor side of ``conveyor bench``: one job, every promise on.

Loaded with ``CONVEYOR_TASK_MODULES=conveyor.worker.bench.jobs``: the job is claimed in
the ledger before it runs and marked ``succeeded`` before its message is acknowledged.
"""

from __future__ import annotations

from typing import Any

from conveyor.worker.bench.probe import record
from conveyor.worker.jobs import JobContext, job

TASK = "bench.job"


@job(name=TASK)
def bench_job(ctx: JobContext, payload: dict[str, Any]) -> None:
    """One benchmark job (:func:`~worker.bench.probe.record`)."""
    record(payload)
