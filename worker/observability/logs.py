"""Log lines for machines: one JSON object per line, with a stable event name and the job.

Conveyor's code logs through the standard library with an event name as the message and
the facts as ``extra`` fields::

    log.warning("job.retry_scheduled", extra=job_fields(job_id, task, queue, attempt))

:func:`configure_logging` (run by every long-running command) renders every record, also
Celery's and uvicorn's, with structlog: ``{"event": "job.retry_scheduled", "job_id": ...,
"level": "warning", "logger": "conveyor.runtime", "timestamp": ..., "trace_id": ...}``.
``trace_id`` is the active OpenTelemetry trace, when tracing is on.

Payloads and results never reach the log: no event carries them, fields that would
(payload, kwargs, args, result, Celery's ``data``) are dropped, and Celery's own
"Task ... succeeded: RESULT" line is turned off (Conveyor logs ``job.succeeded`` instead).

Secrets never do either: every value of every line goes through
:mod:`~worker.observability.masking` (the settings' secrets, any URL's password).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, Final

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from conveyor.config.settings import LogFormat
from conveyor.worker.observability.masking import mask_event
from conveyor.worker.observability.tracing import current_trace_id
from conveyor.worker.outcomes import Event

if TYPE_CHECKING:
    from conveyor.worker.outcomes import JobEvent

HIDDEN: Final = frozenset(
    {"payload", "kwargs", "args", "argsrepr", "kwargsrepr", "result", "body", "data"}
)
"""Field names dropped from every line: they would carry a job's data (Celery passes a
task's arguments as ``extra={"data": ...}`` with its "Task ... received" line)."""

QUIET: Final = {"celery.app.trace": logging.WARNING, "kombu": logging.WARNING}
"""Loggers turned down: Celery's trace logs each result; kombu repeats reconnect noise."""


def job_fields(
    job_id: str, task: str | None = None, queue: str | None = None, attempt: int | None = None
) -> dict[str, Any]:
    """The fields that identify a job in a log line (``extra=``); unknown ones are left out."""
    fields: dict[str, Any] = {"job_id": job_id, "task": task, "queue": queue, "attempt": attempt}
    return {key: value for key, value in fields.items() if value is not None}


job_log = logging.getLogger("conveyor.runtime")

_LINES: Final = {
    Event.ENQUEUED: (logging.DEBUG, "job.enqueued"),
    Event.PUBLISHED: (logging.DEBUG, "job.published"),
    Event.CLAIMED: (logging.DEBUG, "job.claimed"),
    Event.SKIPPED: (logging.INFO, "job.skipped"),
    Event.SUCCEEDED: (logging.INFO, "job.succeeded"),
    Event.RETRY: (logging.WARNING, "job.retry_scheduled"),
    Event.DEAD: (logging.ERROR, "job.dead"),
    Event.LEASE_LOST: (logging.WARNING, "job.lease_lost"),
    Event.DEFERRED: (logging.DEBUG, "job.deferred"),
    Event.REPLAYED: (logging.INFO, "job.replayed"),
}
"""Each event's level and line; a dead-lettered poison message logs ``job.poison``."""


def observe(event: JobEvent) -> None:
    """Log ``event`` as one line (the outcome chain's log observer); never its payload."""
    level, name = _LINES[event.event]
    if not job_log.isEnabledFor(level):
        return
    fields = job_fields(event.job_id, event.task, event.queue, event.attempt)
    if event.state is not None:
        fields["state"] = event.state
    if event.delay_s is not None:
        fields["delay_s"] = round(event.delay_s, 3)
    if event.reason is not None:
        fields["reason"] = event.reason.value
        if event.reason.is_poison:
            name = "job.poison"
    if event.failure is not None:
        fields["error_type"] = event.failure.error_type
    if event.limit is not None:
        fields["limit"] = event.limit
    job_log.log(level, name, extra=fields)


def _add_trace_id(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    trace_id = current_trace_id()
    if trace_id is not None:
        event["trace_id"] = trace_id
    return event


def _drop_hidden(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    for key in HIDDEN.intersection(event):
        del event[key]
    return event


def configure_logging(level: str, fmt: LogFormat = LogFormat.JSON) -> None:
    """Send every log record to stderr as JSON lines (or readable text) at ``level``."""
    shared: list[Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_id,
        _drop_hidden,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt is LogFormat.JSON
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                mask_event,  # secrets out of every value, the traceback included
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, quiet in QUIET.items():
        logging.getLogger(name).setLevel(max(quiet, logging.getLevelName(level)))
