"""Conveyor's platform runtime. Task authors need only this package's top level:

from worker import job, JobContext, RetryAfter, Fatal
"""

from worker.errors import Fatal, RetryAfter
from worker.jobs import JobContext, job
from worker.policy import Backoff

__all__ = ["Backoff", "Fatal", "JobContext", "RetryAfter", "job"]
