"""Conveyor's platform runtime. Task authors need only this package's top level:

from conveyor import job, JobContext, RetryAfter, Fatal, cron, every

The names load on first use, so that a part that needs none of them (``conveyor --help``,
the CLI's light commands) does not pay for the ORM and the settings they bring.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if __name__ != "conveyor.worker":  # a second copy would hold a second job registry
    raise ImportError(f"import conveyor.worker, not {__name__}: it is not a top-level package")

if TYPE_CHECKING:
    from conveyor.worker.errors import Fatal, RetryAfter
    from conveyor.worker.jobs import JobContext, job
    from conveyor.worker.policy import Backoff
    from conveyor.worker.schedules import cron, every

__all__ = ["Backoff", "Fatal", "JobContext", "RetryAfter", "cron", "every", "job"]

_HOMES = {
    "Backoff": "conveyor.worker.policy",
    "Fatal": "conveyor.worker.errors",
    "JobContext": "conveyor.worker.jobs",
    "RetryAfter": "conveyor.worker.errors",
    "cron": "conveyor.worker.schedules",
    "every": "conveyor.worker.schedules",
    "job": "conveyor.worker.jobs",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'conveyor.worker' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
