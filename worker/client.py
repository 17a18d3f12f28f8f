"""The Python producer: ``from worker.client import enqueue, get_job``.

:func:`enqueue` validates the job against the registry, writes the ledger row, then
publishes the message. If the publish fails, the row is removed again, so a failed
enqueue leaves nothing half-made; an enqueue that returned an id has both.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from functools import cache
from time import perf_counter
from typing import Any

from sqlalchemy.orm import Session

from conveyor.config import load_settings
from conveyor.worker.admission import check_key_reuse, check_payload
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.catalog import job_type
from conveyor.worker.errors import EnqueueError, UsageError
from conveyor.worker.ledger import NewJob
from conveyor.worker.models import Job, utcnow
from conveyor.worker.observability.tracing import job_trace_context, traced_enqueue
from conveyor.worker.outcomes import Event, JobEvent
from conveyor.worker.publish import publish


@cache
def default_app() -> ConveyorApp:
    """The app built from the environment's settings, once per process."""
    return create_app(load_settings())


@traced_enqueue(default_app=default_app)
def enqueue(
    task_name: str,
    payload: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    queue: str | None = None,
    delay: float | timedelta | None = None,
    priority: int | None = None,
    session: Session | None = None,
    app: ConveyorApp | None = None,
) -> str:
    """Hand a job to Conveyor and return its id.

    Raises :class:`~worker.errors.UnknownTask` or :class:`~worker.errors.PayloadInvalid`
    for a job that could never run (:mod:`worker.admission`), and
    :class:`~worker.errors.EnqueueError` when the broker did not take the message. With an
    ``idempotency_key`` used within the idempotency window
    (``CONVEYOR_IDEMPOTENCY_WINDOW_S``) by the same task and payload, nothing new is
    written or published and the existing job's id is returned, also under concurrent
    calls; by another task or payload, :class:`~worker.admission.IdempotencyConflict`. A job
    with a ``delay`` waits in the ledger (state ``scheduled``) until the relay publishes it.

    With ``session`` (a SQLAlchemy session on the ledger database), the job is written in
    the caller's transaction — the transactional outbox: if the caller commits, the relay
    publishes it; if the caller rolls back, the job never existed. Nothing is published
    from inside the caller's transaction.
    """
    app = app or default_app()
    spec = job_type(app.ledger, task_name)
    check_payload(spec, payload)
    delay_s = delay.total_seconds() if isinstance(delay, timedelta) else delay
    if delay_s is not None and delay_s < 0:
        raise UsageError("delay must be >= 0 seconds")
    if priority is not None and not 0 <= priority <= 9:
        raise UsageError("priority must be between 0 and 9")
    target = queue or spec.queue or app.settings.default_queue
    traceparent, tracestate = job_trace_context(queue=target)
    now = utcnow()
    if session is not None:
        # The outbox: the row commits or rolls back with the caller; the relay publishes it.
        run_at: datetime | None = now + timedelta(seconds=delay_s or 0)
    else:
        run_at = now + timedelta(seconds=delay_s) if delay_s else None
    new = NewJob(
        id=str(uuid.uuid4()),
        task=spec.name,
        queue=target,
        payload=payload,
        max_attempts=spec.max_attempts,
        idempotency_key=idempotency_key,
        priority=priority,
        run_at=run_at,
        traceparent=traceparent,
        tracestate=tracestate,
    )
    window_s = app.settings.idempotency_window_s
    began = perf_counter()
    job_id, created = app.ledger.create(new, window_s=window_s, session=session)
    enqueued = JobEvent(
        Event.ENQUEUED,
        job_id,
        spec.name,
        target,
        ledger_s=perf_counter() - began,
        ledger_operation="create",
    )
    if created and session is None and new.run_at is not None:
        app.outcomes.emit(enqueued)
    if not created and idempotency_key is not None:
        _check_key_reuse(app, job_id, idempotency_key, spec.name, payload, session)
    if not created or new.run_at is not None:
        # A duplicate key publishes nothing; a delayed or outbox job waits for the relay.
        # (An outbox row is announced nowhere: it exists only if the caller commits.)
        return job_id
    try:
        publish(
            app,
            job_id=job_id,
            task=spec.name,
            queue=target,
            payload=payload,
            priority=priority,
            idempotency_key=idempotency_key,
        )
    except EnqueueError:
        app.ledger.delete(job_id)  # the broker never took it: leave nothing half-made
        raise
    app.outcomes.emit(enqueued)
    return job_id


def get_job(job_id: str, *, app: ConveyorApp | None = None) -> Job:
    """The job's ledger row; raises :class:`~worker.errors.JobNotFound`."""
    return (app or default_app()).ledger.require(job_id)


def cancel(job_id: str, *, app: ConveyorApp | None = None) -> bool:
    """Cancel a job that has not started: True if it was ``queued`` or ``scheduled``.

    A cancelled job never runs (its message, if any, is acknowledged unrun when it
    arrives). A running job is not interrupted and a finished one is left as it is: both
    return False. Raises :class:`~worker.errors.JobNotFound` for an unknown id.
    """
    app = app or default_app()
    if app.ledger.cancel(job_id):
        return True
    get_job(job_id, app=app)  # raises JobNotFound when there is no such job
    return False


def _check_key_reuse(
    app: ConveyorApp,
    job_id: str,
    key: str,
    task: str,
    payload: dict[str, Any],
    session: Session | None,
) -> None:
    """The key's job must be this same request (one extra read, on duplicates only)."""
    holder = session.get(Job, job_id) if session is not None else app.ledger.get(job_id)
    if holder is not None:
        check_key_reuse(
            key, task=task, payload=payload, holder_task=holder.task, holder_payload=holder.payload
        )
