"""Conveyor: a job-processing platform on Celery.

What most code needs, from one import that cannot collide with a service's own packages::

    from conveyor import job, JobContext, RetryAfter, Fatal, Backoff   # writing jobs
    from conveyor import cron, every                                   # ... periodic ones
    from conveyor import enqueue, get_job, cancel                      # producing them
    from conveyor import enqueue_many, JobRequest                      # ... many at once

The parts live below it: ``conveyor.worker`` (the runtime, the ledger, the CLI and the
API), ``conveyor.config`` (settings) and ``conveyor.tasks`` (reference jobs, imported only
when ``CONVEYOR_TASK_MODULES`` names them). Every name loads on first use, so
``import conveyor`` costs nothing until a name is used, and a job module that imports
``job`` pays for no broker client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.worker import Backoff, Fatal, JobContext, RetryAfter, cron, every, job
    from conveyor.worker.client import JobRequest, cancel, enqueue, enqueue_many, get_job

__all__ = [
    "Backoff",
    "Fatal",
    "JobContext",
    "JobRequest",
    "RetryAfter",
    "cancel",
    "cron",
    "enqueue",
    "enqueue_many",
    "every",
    "get_job",
    "job",
]

_PRODUCER = frozenset({"JobRequest", "cancel", "enqueue", "enqueue_many", "get_job"})


def __getattr__(name: str) -> Any:
    if name in _PRODUCER:
        return getattr(importlib.import_module("conveyor.worker.client"), name)
    if name in __all__:
        return getattr(importlib.import_module("conveyor.worker"), name)
    raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
