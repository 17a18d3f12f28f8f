"""The Python producer: ``from worker.client import enqueue, get_job``.

:func:`enqueue` validates the job against the registry, writes the ledger row, then
publishes the message. If the publish fails, the row is removed again, so a failed
enqueue leaves nothing half-made; an enqueue that returned an id has both.
:func:`enqueue_many` does the same for a batch, with one statement and one wait for the
broker for all of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from time import perf_counter
from typing import Any

from sqlalchemy.orm import Session

from conveyor.config import load_settings
from conveyor.worker.admission import IdempotencyConflict, check_key_reuse, check_payload
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.catalog import job_type
from conveyor.worker.errors import ConveyorError, EnqueueError, UsageError
from conveyor.worker.ledger import NewJob
from conveyor.worker.models import Job, utcnow
from conveyor.worker.observability.tracing import (
    job_trace_context,
    traced_batch,
    traced_enqueue,
)
from conveyor.worker.outcomes import Event, JobEvent
from conveyor.worker.publish import Outgoing, publish, publish_many


@cache
def default_app() -> ConveyorApp:
    """The app built from the environment's settings, once per process."""
    return create_app(load_settings())


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One job of a batch for :func:`enqueue_many`: the arguments :func:`enqueue` takes."""

    task: str
    payload: dict[str, Any]
    idempotency_key: str | None = None
    queue: str | None = None
    delay: float | timedelta | None = None
    priority: int | None = None
    expires_in: float | timedelta | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What :func:`enqueue_many` made of one request: the job's id, or why there is none.

    ``created`` is False when an idempotency key named an existing job (``id`` is that
    job's). ``error`` is what :func:`enqueue` would have raised for this request alone.
    """

    id: str | None
    created: bool = False
    error: ConveyorError | None = None


@traced_enqueue(default_app=default_app)
def enqueue(
    task_name: str,
    payload: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    queue: str | None = None,
    delay: float | timedelta | None = None,
    priority: int | None = None,
    expires_in: float | timedelta | None = None,
    expires_at: datetime | None = None,
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

    A deadline, ``expires_in`` (seconds from now, > 0) or ``expires_at`` (an aware
    datetime in the future), never both: a job not started by then ends ``cancelled``
    with ``cancel_reason`` ``expired``, without running (docs/jobs.md, "Deadlines").
    A bad deadline raises :class:`~worker.errors.UsageError`.

    With ``session`` (a SQLAlchemy session on the ledger database), the job is written in
    the caller's transaction — the transactional outbox: if the caller commits, the relay
    publishes it; if the caller rolls back, the job never existed. Nothing is published
    from inside the caller's transaction.
    """
    app = app or default_app()
    request = JobRequest(
        task_name, payload, idempotency_key, queue, delay, priority, expires_in, expires_at
    )
    new = _new_job(app, request, outbox=session is not None)
    began = perf_counter()
    job_id, created = app.ledger.create(
        new, window_s=app.settings.idempotency_window_s, session=session
    )
    enqueued = _enqueued(new, job_id, ledger_s=perf_counter() - began, operation="create")
    if created and session is None and new.run_at is not None:
        app.outcomes.emit(enqueued)
    if not created and idempotency_key is not None:
        _check_key_reuse(app, job_id, new, session)
    if not created or new.run_at is not None:
        # A duplicate key publishes nothing; a delayed or outbox job waits for the relay.
        # (An outbox row is announced nowhere: it exists only if the caller commits.)
        return job_id
    try:
        publish(
            app,
            job_id=job_id,
            task=new.task,
            queue=new.queue,
            payload=payload,
            priority=priority,
            idempotency_key=idempotency_key,
        )
    except EnqueueError:
        app.ledger.delete(job_id)  # the broker never took it: leave nothing half-made
        raise
    app.outcomes.emit(enqueued)
    return job_id


def enqueue_many(
    requests: Iterable[JobRequest],
    *,
    session: Session | None = None,
    app: ConveyorApp | None = None,
) -> list[Enqueued]:
    """Hand many jobs to Conveyor at once; one :class:`Enqueued` per request, in order.

    Each request gets what :func:`enqueue` would have given it alone — the same checks,
    idempotency keys (also against earlier requests of the same batch), delays and
    outbox — but the ledger rows are written by one statement and the messages published
    with one wait for the broker (:func:`~worker.publish.publish_many`). A request that
    fails does not stop the others: its ``error`` says why, and nothing of it was kept.
    With ``session``, every row is written in the caller's transaction (the outbox).
    The whole batch is held in memory: send at most a few thousand jobs per call.
    """
    app = app or default_app()
    requests = list(requests)
    results: list[Enqueued] = [Enqueued(None)] * len(requests)
    with traced_batch(len(requests)):
        valid: list[tuple[int, NewJob]] = []
        for index, request in enumerate(requests):
            try:
                valid.append((index, _new_job(app, request, outbox=session is not None)))
            except ConveyorError as exc:
                results[index] = Enqueued(None, error=exc)
        written = _write_batch(app, valid, results, session)
        failures = publish_many(app, [_outgoing(new) for new, _ in written if new.run_at is None])
    if failures:
        app.ledger.delete(*failures)  # the broker never took them: leave nothing half-made
        for index, result in enumerate(results):
            if result.id in failures:  # a duplicate of the batch's own job shares its fate
                results[index] = Enqueued(None, error=failures[result.id])
    for new, event in written:
        if new.id not in failures:
            app.outcomes.emit(event)
    return results


def _write_batch(
    app: ConveyorApp,
    valid: list[tuple[int, NewJob]],
    results: list[Enqueued],
    session: Session | None,
) -> list[tuple[NewJob, JobEvent]]:
    """Write the batch's rows and fill in ``results``; returns the jobs it created anew
    outside an outbox (to publish, or to leave to the relay), with their events."""
    began = perf_counter()
    rows = app.ledger.create_many(
        [new for _, new in valid], window_s=app.settings.idempotency_window_s, session=session
    )
    ledger_s: float | None = perf_counter() - began
    written: list[tuple[NewJob, JobEvent]] = []
    for (index, new), (job_id, created) in zip(valid, rows, strict=True):
        if not created and new.idempotency_key is not None:
            try:
                _check_key_reuse(app, job_id, new, session)
            except IdempotencyConflict as exc:
                results[index] = Enqueued(None, error=exc)
                continue
        results[index] = Enqueued(job_id, created)
        if created and session is None:
            # The batch's one statement is timed once, on its first job's event.
            event = _enqueued(new, job_id, ledger_s=ledger_s, operation="create_many")
            written.append((new, event))
            ledger_s = None
    return written


def _new_job(app: ConveyorApp, request: JobRequest, *, outbox: bool) -> NewJob:
    """The ledger row for ``request``, or the error that refuses it (:mod:`worker.admission`)."""
    spec = job_type(app.ledger, request.task)
    settings = app.settings
    check_payload(
        spec,
        request.payload,
        max_bytes=settings.max_payload_bytes,
        max_depth=settings.max_payload_depth,
    )
    delay = request.delay
    delay_s = delay.total_seconds() if isinstance(delay, timedelta) else delay
    if delay_s is not None and delay_s < 0:
        raise UsageError("delay must be >= 0 seconds")
    priority = request.priority
    if priority is not None and not 0 <= priority <= 9:
        raise UsageError("priority must be between 0 and 9")
    target = request.queue or spec.queue or app.settings.default_queue
    traceparent, tracestate = job_trace_context(queue=target)
    now = utcnow()
    expires_at = deadline(request.expires_in, request.expires_at, now=now)
    if outbox:
        # The outbox: the row commits or rolls back with the caller; the relay publishes it.
        run_at: datetime | None = now + timedelta(seconds=delay_s or 0)
    else:
        run_at = now + timedelta(seconds=delay_s) if delay_s else None
    return NewJob(
        id=str(uuid.uuid4()),
        task=spec.name,
        queue=target,
        payload=request.payload,
        max_attempts=spec.max_attempts,
        idempotency_key=request.idempotency_key,
        priority=priority,
        run_at=run_at,
        traceparent=traceparent,
        tracestate=tracestate,
        expires_at=expires_at,
    )


def deadline(
    expires_in: float | timedelta | None, expires_at: datetime | None, *, now: datetime
) -> datetime | None:
    """The job's ``expires_at`` from either form of deadline; raises :class:`UsageError`
    for both at once, a non-positive ``expires_in``, or a naive or past ``expires_at``."""
    if expires_in is not None and expires_at is not None:
        raise UsageError("give expires_in or expires_at, not both")
    if expires_in is not None:
        seconds = expires_in.total_seconds() if isinstance(expires_in, timedelta) else expires_in
        if isinstance(seconds, bool) or not seconds > 0:
            raise UsageError("expires_in must be > 0 seconds")
        try:
            return now + timedelta(seconds=seconds)
        except OverflowError:  # also infinity
            raise UsageError("expires_in is too far in the future") from None
    if expires_at is None:
        return None
    if expires_at.tzinfo is None or expires_at.utcoffset() is None:
        raise UsageError("expires_at must be an aware datetime (with a time zone)")
    if expires_at <= now:
        raise UsageError("expires_at is already past: the job could never run")
    return expires_at.astimezone(UTC)


def _enqueued(new: NewJob, job_id: str, *, ledger_s: float | None, operation: str) -> JobEvent:
    return JobEvent(
        Event.ENQUEUED,
        job_id,
        new.task,
        new.queue,
        ledger_s=ledger_s,
        ledger_operation=operation if ledger_s is not None else None,
    )


def _outgoing(new: NewJob) -> Outgoing:
    return Outgoing(new.id, new.task, new.queue, new.payload, new.priority, new.idempotency_key)


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


def _check_key_reuse(app: ConveyorApp, job_id: str, new: NewJob, session: Session | None) -> None:
    """The key's job must be this same request (one extra read, on duplicates only)."""
    holder = session.get(Job, job_id) if session is not None else app.ledger.get(job_id)
    if holder is not None:
        check_key_reuse(
            str(new.idempotency_key),
            task=new.task,
            payload=new.payload,
            holder_task=holder.task,
            holder_payload=holder.payload,
        )
