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
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from worker.constants import HEARTBEAT_EVERY_S, IDEMPOTENCY_HEADER, LEASE_S
from worker.errors import Fatal, PayloadInvalid
from worker.heartbeat import Heartbeat
from worker.jobs import JobContext, JobSpec
from worker.ledger import WORKER_LOST, Failure, Ledger, NewJob
from worker.policy import DeadLetter, decide

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


class Runtime:
    """Runs attempts against one ledger. One instance per Celery app (per process)."""

    def __init__(self, *, ledger: Ledger, default_queue: str, dead_letters: DeadLetters) -> None:
        self.ledger = ledger
        self.default_queue = default_queue
        self.dead_letters = dead_letters
        self.hostname = socket.gethostname()
        self.heartbeat = Heartbeat(ledger, lease_s=LEASE_S, every_s=HEARTBEAT_EVERY_S)

    def execute(self, spec: JobSpec, delivery: Delivery) -> Any:
        """Run one attempt. Returns normally when the message may be acknowledged.

        Raises :class:`Postpone` when the ledger could not be reached: the message must
        come back later, since no outcome could be recorded.
        """
        try:
            return self._execute(spec, delivery)
        except SQLAlchemyError as exc:
            log.warning("ledger.unavailable job_id=%s error=%s", delivery.job_id, exc)
            raise Postpone(LEDGER_RETRY_S) from exc

    def _execute(self, spec: JobSpec, delivery: Delivery) -> Any:
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
            ),
        )
        if claim.attempt is None:
            # Finished, a duplicate by key, or held by a live worker: this message is
            # redundant. If that worker dies, the relay recovers the job when its lease ends.
            log.info("job.skipped job_id=%s state=%s", delivery.job_id, claim.state)
            return None
        attempt = claim.attempt
        if attempt > spec.policy.max_attempts:
            # Earlier attempts died with their process (killed, hard time limit): stop here.
            failure = Failure(WORKER_LOST, f"attempt {attempt - 1} ended with its worker")
            self._dead(delivery, spec.name, attempt, "exhausted", failure, ran=False)
            return None
        try:
            with self.heartbeat.hold(delivery.job_id, attempt):
                return self._run(spec, delivery, attempt, claim.idempotency_key)
        except LeaseLost:
            log.warning("job.lease_lost job_id=%s attempt=%d", delivery.job_id, attempt)
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
            result = jsonable(spec.fn(ctx, payload))
            if not self.ledger.succeed(session, delivery.job_id, attempt, result):
                raise LeaseLost(delivery.job_id)
        log.info("job.succeeded job_id=%s task=%s attempt=%d", delivery.job_id, spec.name, attempt)
        return result

    def _failed(self, spec: JobSpec, delivery: Delivery, attempt: int, error: Exception) -> None:
        job_id = delivery.job_id
        decision = decide(attempt, error, spec.policy)
        failure = failure_of(error)
        if isinstance(decision, DeadLetter):
            self._dead(delivery, spec.name, attempt, decision.reason, failure)
        elif self.ledger.fail(job_id, attempt, failure, retry_in_s=decision.delay_s):
            log.warning(
                "job.retry_scheduled job_id=%s task=%s attempt=%d delay_s=%.2f error=%s",
                job_id,
                spec.name,
                attempt,
                decision.delay_s,
                failure.error_type,
            )
        else:
            log.warning("job.lease_lost job_id=%s attempt=%d", job_id, attempt)

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
        recorded = self.ledger.fail(
            job_id, attempt, failure, retry_in_s=None, dead_reason=reason, ran=ran
        )
        if not recorded:
            log.warning("job.lease_lost job_id=%s attempt=%d", job_id, attempt)
            return
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
        log.error(
            "job.dead job_id=%s attempt=%d reason=%s error=%s",
            job_id,
            attempt,
            reason,
            failure.error_type,
        )
