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

from pydantic import ValidationError
from sqlalchemy.orm import Session

from config import load_settings
from worker.app import ConveyorApp, create_app
from worker.errors import EnqueueError, JobNotFound, PayloadInvalid, UsageError
from worker.jobs import JobSpec, spec_for
from worker.ledger import NewJob
from worker.metrics import ENQUEUED, LEDGER_SECONDS
from worker.models import Job, utcnow
from worker.publish import publish
from worker.tracing import job_trace_context, traced_enqueue


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
    for a job that could never run, and :class:`~worker.errors.EnqueueError` when the
    broker did not take the message. With an ``idempotency_key`` used within the
    idempotency window (``CONVEYOR_IDEMPOTENCY_WINDOW_S``), nothing new is written or
    published and the existing job's id is returned, also under concurrent calls. A job
    with a ``delay`` waits in the ledger (state ``scheduled``) until the relay publishes it.

    With ``session`` (a SQLAlchemy session on the ledger database), the job is written in
    the caller's transaction — the transactional outbox: if the caller commits, the relay
    publishes it; if the caller rolls back, the job never existed. Nothing is published
    from inside the caller's transaction.
    """
    app = app or default_app()
    spec = spec_for(task_name)
    _validate(spec, payload)
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
        max_attempts=spec.policy.max_attempts,
        idempotency_key=idempotency_key,
        priority=priority,
        run_at=run_at,
        traceparent=traceparent,
        tracestate=tracestate,
    )
    window_s = app.settings.idempotency_window_s
    began = perf_counter()
    job_id, created = app.ledger.create(new, window_s=window_s, session=session)
    LEDGER_SECONDS.labels("create").observe(perf_counter() - began)
    if created and session is None and new.run_at is not None:
        ENQUEUED.labels(spec.name, target).inc()
    if not created or new.run_at is not None:
        # A duplicate key publishes nothing; a delayed or outbox job waits for the relay.
        # (An outbox row is counted nowhere: it exists only if the caller commits.)
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
    ENQUEUED.labels(spec.name, target).inc()
    return job_id


def get_job(job_id: str, *, app: ConveyorApp | None = None) -> Job:
    """The job's ledger row; raises :class:`~worker.errors.JobNotFound`."""
    app = app or default_app()
    found = app.ledger.get(job_id)
    if found is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    return found


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


def _validate(spec: JobSpec, payload: Any) -> None:
    if not isinstance(payload, dict):
        raise PayloadInvalid("the payload must be a JSON object")
    if spec.schema is not None:
        try:
            spec.schema.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "payload"
            raise PayloadInvalid(
                f"payload for {spec.name!r} is invalid at {where}: {first['msg']}"
            ) from None
