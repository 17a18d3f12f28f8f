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
   relay publishes it when due) or **dead-letter** (:meth:`worker.deadletter.DeadLetters.bury`).

Each step is recorded in the ledger first, then announced to the outcome chain
(:mod:`worker.outcomes`), which counts, logs, traces and reports it. A retry never waits
in a worker's memory: it waits in the ledger, which survives worker and broker restarts.

What happens to the message, and what Flower shows
--------------------------------------------------

Celery acknowledges late: when the task ends. The task body (:mod:`worker.app`) ends each
task the way its outcome reads, so Flower, which sees only Celery's task events, shows the
truth about each delivery (docs/flower.md); the ledger stays the record of the job.

=================================  ============================  ==============================
:meth:`Runtime.attempt` ...        the task ends with (Flower)   the message is ...
=================================  ============================  ==============================
returns (succeeded)                its result (SUCCESS)          acknowledged
raises :class:`RetryScheduled`     Celery's ``Retry`` (RETRY),   acknowledged: the retry waits
(retry scheduled)                  which republishes nothing     in the ledger and the relay
                                                                 publishes it when due (same
                                                                 id: SUCCESS once it succeeds)
raises :class:`DeadLettered`       that exception (FAILURE,      acknowledged
(fatal, exhausted, invalid         the error's type in the       (``task_acks_on_failure``):
payload, unstorable message,       exception field)              the dead row is in the ledger
attempts used up by crashes)                                     and the letter on ``Q.dead``
raises :class:`Redundant`          Celery's ``Ignore`` (no       acknowledged: there was
(skipped duplicate, lease lost,    event: no second success)     nothing to record (an
deadline passed before it ran)                                   expired job's claim marked
                                                                 it cancelled, ``expired``)
raises :class:`Postpone`           ``task.retry`` (RETRY)        republished for later, then
(ledger unreachable)                                             acknowledged: no attempt was
                                                                 recorded or counted
raises anything else (a bug in     that exception (FAILURE)      acknowledged as a failure; the
Conveyor)                                                        job's row is ``running`` and
                                                                 the relay recovers it when its
                                                                 lease expires
the worker process dies            no ending (STARTED)           not acknowledged: redelivered
                                                                 (RabbitMQ) or restored after
                                                                 the visibility timeout
                                                                 (Redis); the relay recovers
                                                                 the lease
=================================  ============================  ==============================

Every task declares :class:`DeadLettered` in its ``throws``: Celery logs it as expected (no
error line, no traceback) and neither Sentry's Celery integration nor OpenTelemetry's
reports it, so a dead letter's one Sentry event stays the outcome chain's (and
:func:`worker.observability.sentry.before_send` drops any :class:`Ended` besides). Celery's
``task_failure`` and ``task_retry`` signals reach no observer: only the ledger-backed outcome
chain counts, logs and reports.

Errors from the ledger mean one of two things, each handled in one place: a
:class:`~sqlalchemy.exc.DataError` from a statement of the *message's* (its id, key or
payload cannot be stored) makes it unstorable poison; any other
:class:`~sqlalchemy.exc.SQLAlchemyError` means the ledger cannot be reached now
(:class:`Postpone`). A DataError from the *job's own* statement is the job's error and
follows its retry policy.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from functools import partial
from time import perf_counter
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DataError, SQLAlchemyError

from conveyor.worker.constants import DeadReason
from conveyor.worker.deadletter import DeadLetters, Letter
from conveyor.worker.delivery import Delivery
from conveyor.worker.errors import (
    LEASE_LOST,
    WORKER_LOST,
    DeadLettered,
    Deferred,
    Ended,
    Failure,
    Fatal,
    LeaseLost,
    PayloadInvalid,
    Redundant,
    RetryAfter,
    RetryScheduled,
    failure_of,
)
from conveyor.worker.gate import Gate
from conveyor.worker.heartbeat import Heartbeat
from conveyor.worker.jobs import JobContext, JobSpec
from conveyor.worker.ledger import Claim, Ledger, NewJob
from conveyor.worker.observability.logs import job_fields
from conveyor.worker.observability.tracing import job_trace_context
from conveyor.worker.outcomes import Event, JobEvent, Outcomes
from conveyor.worker.policy import DeadLetter, decide

log = logging.getLogger("conveyor.runtime")

LEDGER_RETRY_S = 5.0
"""How long a message waits before another try when the ledger could not be reached."""


class Postpone(Exception):
    """Put the message back for later without counting an attempt (the ledger is down)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        super().__init__(f"postponed {delay_s:.1f}s")


def jsonable(value: Any) -> Any:
    """The job's result as JSON data; anything else is a bug in the job, so fatal."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise Fatal(f"the job returned a value that is not JSON-serializable: {exc}") from exc


@dataclass(slots=True)
class Attempt:
    """One claimed attempt of a job, as it goes through :class:`Runtime`."""

    spec: JobSpec
    delivery: Delivery
    number: int
    idempotency_key: str | None
    run_s: float | None = None
    """Seconds the job's function ran, once it has."""

    def event(self, kind: Event, **fields: Any) -> JobEvent:
        delivery = self.delivery
        return JobEvent(
            kind, delivery.job_id, self.spec.name, delivery.queue, self.number, **fields
        )

    def letter(self, reason: DeadReason, failure: Failure, *, ran: bool = True) -> Letter:
        return Letter(
            job_id=self.delivery.job_id,
            task=self.spec.name,
            queue=self.delivery.queue,
            reason=reason,
            failure=failure,
            payload=self.delivery.payload,
            attempt=self.number,
            ran=ran,
            idempotency_key=self.delivery.idempotency_key,
        )


class Runtime:
    """Runs attempts against one ledger. One instance per Celery app (per process)."""

    def __init__(
        self, *, ledger: Ledger, dead_letters: DeadLetters, outcomes: Outcomes, lease_s: float
    ) -> None:
        self.ledger = ledger
        self.dead_letters = dead_letters
        self.outcomes = outcomes
        self.hostname = socket.gethostname()
        self.lease_s = lease_s
        """How long a claim lasts unless renewed (``CONVEYOR_JOB_LEASE_S``)."""
        self.heartbeat = Heartbeat(ledger, lease_s=lease_s)
        self.gate = Gate(ledger, outcomes)

    def execute(self, spec: JobSpec, delivery: Delivery) -> Any:
        """Run one attempt in this process (benchmarks, tests): the job's result, or None
        when it did not succeed; the ledger has the outcome either way.

        Raises :class:`Postpone` as :meth:`attempt` does.
        """
        try:
            return self.attempt(spec, delivery)
        except Ended:
            return None

    def attempt(self, spec: JobSpec, delivery: Delivery) -> Any:
        """Run one attempt for the Celery task: every return and raise below means the
        message may be acknowledged, except :class:`Postpone`.

        Returns the job's result once its success is committed. Raises an :class:`Ended`
        once any other outcome is recorded: :class:`RetryScheduled`, :class:`DeadLettered`
        or :class:`Redundant`. Raises :class:`Postpone` when the ledger could not be
        reached: the message must come back later, since no outcome could be recorded.
        """
        try:
            try:
                return self._execute(spec, delivery)
            except DataError as exc:
                # Acknowledged once buried: no retry could ever store this message.
                raise self._unstorable(spec, delivery, exc) from None
        except SQLAlchemyError as exc:
            # Not acknowledged as it is: republished for later (the ledger cannot be reached).
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
        began = perf_counter()
        key, key_error = self.gate.concurrency_key(spec, delivery)
        claim = self._claim(spec, delivery, key)
        claimed: dict[str, Any] = {"ledger_s": perf_counter() - began, "ledger_operation": "claim"}
        if claim.parked:  # its key is full: it waits, unclaimed, for the relay's release
            raise self.gate.parked(spec, delivery, claimed)
        if claim.attempt is None:
            # Finished, a duplicate by key, held by a live worker, or past its deadline (the
            # claim cancelled it: ``expired``): this message is redundant. If that worker
            # dies, the relay recovers the job when its lease ends.
            self.outcomes.emit(
                JobEvent(
                    Event.SKIPPED,
                    delivery.job_id,
                    spec.name,
                    delivery.queue,
                    state=claim.state.value,
                    **claimed,
                )
            )
            why = " (expired)" if claim.expired else ""
            raise Redundant(f"skipped: the job is {claim.state.value}{why}")
        attempt = Attempt(spec, delivery, claim.attempt, claim.idempotency_key)
        if attempt.number > spec.policy.max_attempts:
            # Earlier attempts died with their process (killed, hard time limit): stop here.
            failure = Failure(WORKER_LOST, f"attempt {attempt.number - 1} ended with its worker")
            raise self._bury(attempt.letter(DeadReason.EXHAUSTED, failure, ran=False))
        try:
            with self.heartbeat.hold(delivery.job_id, attempt.number):
                self.gate.pace(spec, delivery, attempt.number, claim.rate_slot_at)
                self.outcomes.emit(attempt.event(Event.CLAIMED, **claimed))
                if key_error is not None:  # its concurrency key could not be derived
                    raise key_error
                return self._run(attempt)
        except Deferred:
            raise
        except LeaseLost:
            self.outcomes.emit(attempt.event(Event.LEASE_LOST, run_s=attempt.run_s))
            raise Redundant(LEASE_LOST) from None
        except DataError as error:  # the job's own statement failed: the job's error
            raise self._failed(attempt, error) from None
        except SQLAlchemyError:
            raise  # the ledger itself: Postpone, in attempt
        except Exception as error:
            # `from None`: the job's error (its message may quote the payload) must not
            # ride along in the Celery task's traceback, events and span.
            raise self._failed(attempt, error) from None

    def _claim(self, spec: JobSpec, delivery: Delivery, key: str | None) -> Claim:
        """The plain claim, or with ``key`` the gated one of a concurrency limit."""
        # A foreign producer's job gets its row now: keep this run's trace for its retries.
        traceparent, tracestate = job_trace_context(queue=delivery.queue)
        claim = self.ledger.claim
        concurrency = spec.limits.concurrency
        if key is not None and concurrency is not None:
            claim = partial(self.ledger.claim_limited, key=key, limit=concurrency.limit)
        return claim(
            delivery.job_id,
            lease_s=self.lease_s,
            worker=delivery.worker or self.hostname,
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

    def _run(self, attempt: Attempt) -> Any:
        spec, delivery = attempt.spec, attempt.delivery
        payload = validated(spec, delivery)
        ctx = JobContext(
            job_id=delivery.job_id,
            attempt=attempt.number,
            max_attempts=spec.policy.max_attempts,
            idempotency_key=attempt.idempotency_key,
            task=spec.name,
            queue=delivery.queue,
            open_session=self.ledger.session,
            write_progress=partial(self.ledger.progress, delivery.job_id, attempt.number),
        )
        try:
            began = perf_counter()
            try:
                result = jsonable(spec.fn(ctx, payload))
            finally:
                attempt.run_s = perf_counter() - began
            written = perf_counter()
            # In the job's own transaction if it opened one (its writes commit with the
            # success, or not at all), else one autocommitted statement.
            session = ctx.opened_session
            if not self.ledger.succeed(delivery.job_id, attempt.number, result, session=session):
                raise LeaseLost(delivery.job_id)  # the job's writes are rolled back
            if session is not None:
                session.commit()
        finally:
            if ctx.opened_session is not None:
                ctx.opened_session.close()  # rolls back whatever was not committed
        # The success and the job's own writes are committed now.
        self.outcomes.emit(
            attempt.event(
                Event.SUCCEEDED,
                run_s=attempt.run_s,
                ledger_s=perf_counter() - written,
                ledger_operation="succeed",
            )
        )
        return result

    def _failed(self, attempt: Attempt, error: Exception) -> Ended:
        """Record a failed attempt as its policy decides; returns how the task ends."""
        decision = decide(attempt.number, error, attempt.spec.policy)
        failure = failure_of(error)
        if isinstance(error, RetryAfter):
            self.gate.slow_down(attempt.spec, attempt.delivery, error)
        if isinstance(decision, DeadLetter):
            return self._bury(attempt.letter(decision.reason, failure))
        began = perf_counter()
        job_id = attempt.delivery.job_id
        if self.ledger.fail(job_id, attempt.number, failure, retry_in_s=decision.delay_s):
            event = Event.RETRY
        else:
            event = Event.LEASE_LOST
        self.outcomes.emit(
            attempt.event(
                event,
                delay_s=decision.delay_s,
                failure=failure,
                run_s=attempt.run_s,
                ledger_s=perf_counter() - began,
                ledger_operation="fail",
            )
        )
        if event is Event.LEASE_LOST:
            return Redundant(LEASE_LOST)
        return RetryScheduled(
            f"{failure.error_type}: attempt {attempt.number} of "
            f"{attempt.spec.policy.max_attempts} failed, next attempt in {decision.delay_s:.1f}s"
        )

    def _bury(self, letter: Letter) -> Ended:
        """Dead-letter ``letter``; returns how the task ends (raises as ``bury`` does)."""
        if not self.dead_letters.bury(letter):
            return Redundant(LEASE_LOST)  # it emitted that
        return DeadLettered(f"{letter.failure.error_type}: dead-lettered ({letter.reason.value})")

    def _unstorable(self, spec: JobSpec, delivery: Delivery, error: DataError) -> Ended:
        """Dead-letter a message whose data the ledger refuses (without its payload, under a
        fresh job id if the ledger refuses its own: :meth:`DeadLetters.bury`)."""
        cause = error.orig or error
        lines = str(cause).strip().splitlines()
        reason = DeadReason.INVALID_MESSAGE
        failure = failure_of(
            cause, f"{reason}: the ledger cannot store this message: {lines[0] if lines else ''}"
        )
        letter = Letter(
            job_id=delivery.job_id,
            task=spec.name,
            queue=delivery.queue,
            reason=reason,
            failure=Failure(failure.error_type, failure.message),
            payload=delivery.payload,
            message={"id": delivery.job_id},
        )
        return self._bury(letter)


def validated(spec: JobSpec, delivery: Delivery) -> Any:
    """The payload the job's function receives; raises :class:`PayloadInvalid`."""
    if delivery.args:
        raise PayloadInvalid("positional arguments are not accepted: send the payload as kwargs")
    if spec.schema is None:
        return delivery.payload
    try:
        return spec.schema.model_validate(delivery.payload)
    except ValidationError as exc:
        raise PayloadInvalid(f"payload does not match {spec.schema.__name__}: {exc}") from exc
