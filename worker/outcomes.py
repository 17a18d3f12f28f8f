"""The outcome chain: what runs when something happens to a job. Read this module first.

Everything the platform does *about* a job rather than *to* it — counting it, logging it,
marking its trace, reporting it to Sentry — is an observer here. The job's path (the
client, the relay, :mod:`worker.runtime`, the poison consumer, :mod:`worker.deadletter`)
records each step in the ledger first and then calls :meth:`Outcomes.emit` with one
:class:`JobEvent`; nothing on that path counts, logs or reports by itself.

The events, in the order a job meets them:

=================  =====================================================================
``enqueued``       a producer's job is in the ledger and on the broker (or the outbox)
``published``      the relay handed a due, recovered or stranded job to the broker
``claimed``        a worker took the job for one attempt
``skipped``        a delivery was redundant (finished, a duplicate, held by a live worker)
``succeeded``      the attempt's success (and the job's own writes) committed
``retry``          the attempt failed; the job waits in the ledger for its next attempt
``dead``           the job is dead-lettered: in the ledger, then on its ``.dead`` queue
``lease_lost``     another worker took the job over; this attempt's outcome is discarded
``deferred``       a rate or concurrency limit held the job back; it waits in the ledger
``replayed``       an operator replayed a dead job as a new one
=================  =====================================================================

The observers, in the order each event reaches them (:func:`default_observers`):

1. metrics (:mod:`worker.observability.metrics`): counters and timings;
2. logs (:mod:`worker.observability.logs`): one JSON line per event;
3. tracing (:mod:`worker.observability.tracing`): marks a failed attempt's span;
4. Sentry (:mod:`worker.observability.sentry`): one event per dead job.

An observer never raises into the job's path: :meth:`Outcomes.emit` catches and logs
whatever one raises, and the next observer still runs. Observers see events after the
ledger has them, so what they show is never ahead of the truth.

Celery's own signals are not part of the chain. The runtime ends a Celery task with
``Retry``, a failure or ``Ignore`` (so that Flower shows the outcome) only after the event
was emitted here, and nothing in Conveyor connects ``task_failure``, ``task_retry`` or
``task_success``: each outcome is counted, logged and reported once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from conveyor.worker.constants import DeadReason
from conveyor.worker.errors import Failure

log = logging.getLogger("conveyor.outcomes")


class Event(StrEnum):
    ENQUEUED = "enqueued"
    PUBLISHED = "published"
    CLAIMED = "claimed"
    SKIPPED = "skipped"
    SUCCEEDED = "succeeded"
    RETRY = "retry"
    DEAD = "dead"
    LEASE_LOST = "lease_lost"
    DEFERRED = "deferred"
    REPLAYED = "replayed"


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One thing that happened to one job; fields an event does not have stay None."""

    event: Event
    job_id: str
    task: str
    queue: str
    attempt: int | None = None
    state: str | None = None
    """``skipped``: the state the job was found in."""
    delay_s: float | None = None
    """``retry``: seconds until the next attempt; ``deferred``: until its rate slot."""
    reason: DeadReason | None = None
    """``dead``: why."""
    failure: Failure | None = None
    """``retry`` and ``dead``: what the attempt (or the message) raised."""
    payload: dict[str, Any] | None = None
    """``dead``: the job's payload, for observers that may show it when the task allows."""
    run_s: float | None = None
    """Seconds the job's function ran (``succeeded``, and a failed attempt that ran)."""
    ledger_s: float | None = None
    """Seconds the ledger write that recorded this event took."""
    ledger_operation: str | None = None
    """Which write that was: ``create``, ``claim``, ``succeed`` or ``fail``."""
    limit: str | None = None
    """``deferred``: which limit held the job back, ``rate`` or ``concurrency``."""


Observer = Callable[[JobEvent], None]
"""Called once per event, in the job's process; may not rely on being called in order
with other processes' events."""


class Outcomes:
    """The ordered observers of one process, called for every event."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = list(observers)

    def emit(self, event: JobEvent) -> None:
        """Hand ``event`` to each observer in turn; never raises."""
        for observer in self.observers:
            try:
                observer(event)
            except Exception:
                log.exception(
                    "observer.failed",
                    extra={
                        "observer": getattr(observer, "__qualname__", repr(observer)),
                        "event": event.event.value,
                        "job_id": event.job_id,
                    },
                )


def default_observers(*, broker: str) -> list[Observer]:
    """The platform's observers, in order. ``broker`` tags Sentry events."""
    from conveyor.worker.observability.logs import observe as log_event
    from conveyor.worker.observability.metrics import observe as count_event
    from conveyor.worker.observability.sentry import SentryObserver
    from conveyor.worker.observability.tracing import observe as trace_event

    return [count_event, log_event, trace_event, SentryObserver(broker=broker)]
