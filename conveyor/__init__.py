"""Conveyor: a job-processing platform on Celery.

What most code needs, from one import that cannot collide with a service's own packages::

    from conveyor import job, JobContext, RetryAfter, Fatal, Backoff   # writing jobs
    from conveyor import enqueue, get_job, cancel                      # producing them

The parts live below it: ``conveyor.worker`` (the runtime, the ledger, the CLI and the
API), ``conveyor.config`` (settings) and ``conveyor.tasks`` (reference jobs, imported only
when ``CONVEYOR_TASK_MODULES`` names them). The producer functions load on first use, so
``import conveyor`` in a job module costs no broker client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.worker import Backoff, Fatal, JobContext, RetryAfter, job

if TYPE_CHECKING:
    from conveyor.worker.client import cancel, enqueue, get_job

__all__ = ["Backoff", "Fatal", "JobContext", "RetryAfter", "cancel", "enqueue", "get_job", "job"]

_PRODUCER = frozenset({"cancel", "enqueue", "get_job"})


def __getattr__(name: str) -> Any:
    if name in _PRODUCER:
        from conveyor.worker import client

        return getattr(client, name)
    raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
