"""Conveyor's platform runtime. Task authors need only this package's top level:

from conveyor import job, JobContext, RetryAfter, Fatal
"""

if __name__ != "conveyor.worker":  # a second copy would hold a second job registry
    raise ImportError(f"import conveyor.worker, not {__name__}: it is not a top-level package")


from conveyor.worker.errors import Fatal, RetryAfter
from conveyor.worker.jobs import JobContext, job
from conveyor.worker.policy import Backoff

__all__ = ["Backoff", "Fatal", "JobContext", "RetryAfter", "job"]
