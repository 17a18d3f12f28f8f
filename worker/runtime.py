"""One attempt of one job, from the message to the ledger.

For each delivered message the worker:

1. **claims** the job in the ledger (one UPDATE) with a short lease that a heartbeat
   renews while the job runs. A job that already finished, or that a live worker holds,
   is acknowledged without running (a duplicate delivery); a job with no row (foreign
   producer) gets one.
2. **validates** the payload against the job's schema; a mismatch dead-letters at once.
3. **runs** the function with ``ctx.session`` open, and marks the job ``succeeded`` in
   that same transaction, so the job's own writes and its success commit together.
4. On an error, asks the retry policy: **retry** (state ``scheduled`` with ``run_at``; the
   relay publishes it when due) or **dead-letter** (state ``dead``).

The message is acknowledged when :meth:`Runtime.execute` returns (Celery acks late), which
is only ever after the attempt's outcome is in the ledger. A retry never waits in a
worker's memory: it waits in the ledger, which survives worker and broker restarts.
"""

from __future__ import annotations

import json
import logging
import socket
import traceback
import uuid
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DataError, SQLAlchemyError

from worker.constants import HEARTBEAT_EVERY_S, IDEMPOTENCY_HEADER, INVALID_MESSAGE, LEASE_S
from worker.errors import Fatal, PayloadInvalid
from worker.heartbeat import Heartbeat
from worker.jobs import JobContext, JobSpec
from worker.ledger import WORKER_LOST, Failure, Ledger, NewJob
from worker.logs import job_fields
from worker.metrics import DEAD_LETTERED, LEDGER_SECONDS, RETRIED, RUN_SECONDS, STARTED, SUCCEEDED
from worker.policy import DeadLetter, decide
from worker.tracing import job_trace_context

log = logging.getLogger("conveyor.runtime")

LEDGER_RETRY_S = 5.0
"""How long a message waits before another try when the ledger could not be reached."""


class LeaseLost(Exception):
    """Another worker took this job over while it ran; this attempt's effects are discarded."""


class Postpone(Exception):
    """Put the message back for later without counting an attempt (the ledger is down)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        super().__init__(f"postponed {delay_s:.1f}s")


@dataclass(frozen=True, slots=True)
class Delivery:
    """The parts of a Celery message the runtime needs."""

    job_id: str
    queue: str
    payload: dict[str, Any]
    idempotency_key: str | None
    priority: int | None
    args: tuple[Any, ...] = ()


def delivery_from_request(
    request: Any, payload: dict[str, Any], default_queue: str, *, args: tuple[Any, ...] = ()
) -> Delivery:
    """Read a :class:`Delivery` from Celery's task request (protocol v2 message)."""
    info = request.delivery_info or {}
    headers = request.headers or {}
    key = headers.get(IDEMPOTENCY_HEADER) or getattr(request, IDEMPOTENCY_HEADER, None)
    return Delivery(
        job_id=request.id,
        queue=info.get("routing_key") or default_queue,
        payload=payload,
        idempotency_key=str(key) if key is not None else None,
        priority=info.get("priority"),
        args=tuple(args),
    )


def failure_of(error: BaseException) -> Failure:
    return Failure(
        error_type=f"{type(error).__module__}.{type(error).__qualname__}",
        message=str(error)[:4000],
        traceback="".join(traceback.format_exception(error))[-16000:],
    )


def jsonable(value: Any) -> Any:
    """The job's result as JSON data; anything else is a bug in the job, so fatal."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise Fatal(f"the job returned a value that is not JSON-serializable: {exc}") from exc


class DeadLetters(Protocol):
    """Publishes a dead letter to a queue's dead-letter queue (:mod:`worker.deadletter`)."""

    def __call__(
        self, *, queue: str, reason: str, job_id: str | None, record: dict[str, Any]
    ) -> bool: ...


class DeadLetterReport(Protocol):
    """Reports a dead job to the error tracker, once (:func:`worker.sentry.report_dead_letter`)."""

    def __call__(
        self,
        *,
        job_id: str,
        task: str,
        queue: str,
        attempt: int,
        reason: str,
        failure: Failure,
        payload: dict[str, Any],
    ) -> None: ...


class Runtime:
    """Runs attempts against one ledger. One instance per Celery app (per process)."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        default_queue: str,
        dead_letters: DeadLetters,
        report_dead: DeadLetterReport,
    ) -> None:
        self.ledger = ledger
        self.default_queue = default_queue
        self.dead_letters = dead_letters
        self.report_dead = report_dead
        self.hostname = socket.gethostname()
        self.heartbeat = Heartbeat(ledger, lease_s=LEASE_S, every_s=HEARTBEAT_EVERY_S)

    def execute(self, spec: JobSpec, delivery: Delivery) -> Any:
        """Run one attempt. Returns normally when the message may be acknowledged.

        Raises :class:`Postpone` when the ledger could not be reached: the message must
        come back later, since no outcome could be recorded.
        """
        try:
            return self._execute(spec, delivery)
        except DataError as exc:
            # The ledger refuses this message's own data (an id or key too long for its
            # column, a NUL character in the payload): no retry can ever store it, so it
            # is poison. Anything else from the ledger means it cannot be reached now.
            self._unstorable(spec, delivery, exc)
            return None
        except SQLAlchemyError as exc:
            log.warning(
                "ledger.unavailable",
                extra=job_fields(delivery.job_id, spec.name, delivery.queue)
                | {
                    "error_type": type(getattr(exc, "orig", None) or exc).__name__,
                    "retry_in_s": LEDGER_RETRY_S,
                },
            )
            raise Postpone(LEDGER_RETRY_S) from exc

    def _execute(self, spec: JobSpec, delivery: Delivery) -> Any:
        # A foreign producer's job gets its row now: keep this run's trace for its retries.
        traceparent, tracestate = job_trace_context(queue=delivery.queue)
        began = perf_counter()
        claim = self.ledger.claim(
            delivery.job_id,
            lease_s=LEASE_S,
            worker=self.hostname,
            foreign=NewJob(
                id=delivery.job_id,
                task=spec.name,
                queue=delivery.queue,
                payload=delivery.payload,
                max_attempts=spec.policy.max_attempts,
                idempotency_key=delivery.idempotency_key,
                priority=delivery.priority,
                traceparent=traceparent,
                tracestate=tracestate,
            ),
        )
        LEDGER_SECONDS.labels("claim").observe(perf_counter() - began)
        if claim.attempt is None:
            # Finished, a duplicate by key, or held by a live worker: this message is
            # redundant. If that worker dies, the relay recovers the job when its lease ends.
            fields = job_fields(delivery.job_id, spec.name, delivery.queue)
            log.info("job.skipped", extra=fields | {"state": claim.state})
            return None
        attempt = claim.attempt
        STARTED.labels(spec.name, delivery.queue).inc()
        if attempt > spec.policy.max_attempts:
            # Earlier attempts died with their process (killed, hard time limit): stop here.
            failure = Failure(WORKER_LOST, f"attempt {attempt - 1} ended with its worker")
            self._dead(delivery, spec.name, attempt, "exhausted", failure, ran=False)
            return None
        try:
            with self.heartbeat.hold(delivery.job_id, attempt):
                return self._run(spec, delivery, attempt, claim.idempotency_key)
        except DataError as error:  # the job's own statement failed: the job's error
            self._failed(spec, delivery, attempt, error)
            return None
        except LeaseLost:
            fields = job_fields(delivery.job_id, spec.name, delivery.queue, attempt)
            log.warning("job.lease_lost", extra=fields)
            return None
        except SQLAlchemyError:
            raise
        except Exception as error:
            self._failed(spec, delivery, attempt, error)
            return None

    def _run(self, spec: JobSpec, delivery: Delivery, attempt: int, key: str | None) -> Any:
        payload: Any = delivery.payload
        if delivery.args:
            raise PayloadInvalid(
                "positional arguments are not accepted: send the payload as kwargs"
            )
        if spec.schema is not None:
            try:
                payload = spec.schema.model_validate(delivery.payload)
            except ValidationError as exc:
                name = spec.schema.__name__
                raise PayloadInvalid(f"payload does not match {name}: {exc}") from exc
        with self.ledger.session() as session, session.begin():
            ctx = JobContext(
                job_id=delivery.job_id,
                attempt=attempt,
                max_attempts=spec.policy.max_attempts,
                idempotency_key=key,
                task=spec.name,
                queue=delivery.queue,
                session=session,
            )
            began = perf_counter()
            try:
                result = jsonable(spec.fn(ctx, payload))
            except BaseException:
                RUN_SECONDS.labels(spec.name, delivery.queue, "failed").observe(
                    perf_counter() - began
                )
                raise
            written = perf_counter()
            RUN_SECONDS.labels(spec.name, delivery.queue, "succeeded").observe(written - began)
            if not self.ledger.succeed(session, delivery.job_id, attempt, result):
                raise LeaseLost(delivery.job_id)
        # The success and the job's own writes are committed now.
        LEDGER_SECONDS.labels("succeed").observe(perf_counter() - written)
        SUCCEEDED.labels(spec.name, delivery.queue).inc()
        log.info(
            "job.succeeded", extra=job_fields(delivery.job_id, spec.name, delivery.queue, attempt)
        )
        return result

    def _failed(self, spec: JobSpec, delivery: Delivery, attempt: int, error: Exception) -> None:
        job_id = delivery.job_id
        decision = decide(attempt, error, spec.policy)
        failure = failure_of(error)
        # The attempt's run span (when tracing is on) failed: its type, never its message,
        # which may quote the payload. A no-op without tracing.
        span = trace.get_current_span()
        span.set_status(Status(StatusCode.ERROR, failure.error_type))
        span.set_attribute("conveyor.error_type", failure.error_type)
        fields = job_fields(job_id, spec.name, delivery.queue, attempt)
        if isinstance(decision, DeadLetter):
            self._dead(delivery, spec.name, attempt, decision.reason, failure)
        elif self._fail(job_id, attempt, failure, retry_in_s=decision.delay_s):
            RETRIED.labels(spec.name, delivery.queue).inc()
            log.warning(
                "job.retry_scheduled",
                extra=fields
                | {"delay_s": round(decision.delay_s, 3), "error_type": failure.error_type},
            )
        else:
            log.warning("job.lease_lost", extra=fields)

    def _dead(
        self,
        delivery: Delivery,
        task: str,
        attempt: int,
        reason: str,
        failure: Failure,
        *,
        ran: bool = True,
    ) -> None:
        job_id = delivery.job_id
        fields = job_fields(job_id, task, delivery.queue, attempt)
        recorded = self._fail(
            job_id, attempt, failure, retry_in_s=None, dead_reason=reason, ran=ran
        )
        if not recorded:
            log.warning("job.lease_lost", extra=fields)
            return
        DEAD_LETTERED.labels(task, delivery.queue, reason).inc()
        self.dead_letters(
            queue=delivery.queue,
            reason=reason,
            job_id=job_id,
            record={
                "task": task,
                "payload": delivery.payload,
                "idempotency_key": delivery.idempotency_key,
                "attempts": attempt if ran else attempt - 1,
                "error_type": failure.error_type,
                "error_message": failure.message,
                "traceback": failure.traceback,
            },
        )
        self.report_dead(
            job_id=job_id,
            task=task,
            queue=delivery.queue,
            attempt=attempt if ran else attempt - 1,
            reason=reason,
            failure=failure,
            payload=delivery.payload,
        )
        log.error("job.dead", extra=fields | {"reason": reason, "error_type": failure.error_type})

    def _fail(self, job_id: str, attempt: int, failure: Failure, **outcome: Any) -> bool:
        began = perf_counter()
        recorded = self.ledger.fail(job_id, attempt, failure, **outcome)
        LEDGER_SECONDS.labels("fail").observe(perf_counter() - began)
        return recorded

    def _unstorable(self, spec: JobSpec, delivery: Delivery, error: DataError) -> None:
        """Dead-letter a message whose data the ledger refuses, under a fresh job id."""
        cause = error.orig or error
        lines = str(cause).strip().splitlines()
        failure = Failure(
            error_type=f"{type(cause).__module__}.{type(cause).__name__}",
            message=f"{INVALID_MESSAGE}: the ledger cannot store this message: "
            f"{lines[0] if lines else ''}",
        )
        job_id = str(uuid.uuid4())
        self.ledger.bury(
            NewJob(id=job_id, task=spec.name, queue=delivery.queue, payload={}, max_attempts=0),
            failure,
            INVALID_MESSAGE,
        )
        self.dead_letters(
            queue=delivery.queue,
            reason=INVALID_MESSAGE,
            job_id=job_id,
            record={
                "task": spec.name,
                "message_id": delivery.job_id,
                "payload": delivery.payload,
                "error_type": failure.error_type,
                "error_message": failure.message,
            },
        )
        DEAD_LETTERED.labels(spec.name, delivery.queue, INVALID_MESSAGE).inc()
        fields = job_fields(job_id, spec.name, delivery.queue)
        log.error("job.poison", extra=fields | {"reason": INVALID_MESSAGE})
        self.report_dead(
            job_id=job_id,
            task=spec.name,
            queue=delivery.queue,
            attempt=0,
            reason=INVALID_MESSAGE,
            failure=failure,
            payload=delivery.payload,
        )
