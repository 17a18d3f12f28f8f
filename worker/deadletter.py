"""Dead letters: the one path by which anything is dead-lettered, and the ``.dead`` queues.

:meth:`DeadLetters.bury` is called for every dead letter, whatever its origin — a job
whose policy says stop (fatal, exhausted, invalid payload: :mod:`worker.runtime`), a
message the ledger cannot store (:mod:`worker.runtime`), a message that never became a
task (undecodable, unknown task, wrong content type: :mod:`worker.poison`). It always
does the same three things in the same order:

1. **the ledger** records the job as ``dead`` with its reason, error and attempts. This
   is the record of truth (``conveyor dlq`` reads it). If the ledger cannot be reached,
   ``bury`` raises and the caller does not acknowledge the message: it comes back later
   and is buried then. A message is never acknowledged without a record.
2. **the broker**: the same facts, as one JSON message of one shape (:meth:`Letter.record`),
   go to the queue's dead-letter queue ``Q.dead`` for tools that watch queues (RabbitMQ's
   management UI, KEDA, a consumer of your own). A broker hiccup here is logged and the
   letter stays in the ledger: replay and purge do not need the broker's copy.
3. **the outcome chain** (:mod:`worker.outcomes`): a ``dead`` event — metric, log line,
   Sentry event.

Conveyor moves dead messages itself on both brokers, so each one carries why it died —
the exception, its message and traceback — which a broker-side dead-letter exchange
cannot add. A dead-letter message is a plain JSON message, not a Celery task: no worker
will run it by mistake. Its headers say ``x-conveyor-reason`` and ``x-conveyor-job-id``.
"""

from __future__ import annotations

import base64
import logging
import uuid
from dataclasses import dataclass, replace
from time import perf_counter
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue
from sqlalchemy.exc import DataError

from conveyor.config.settings import Settings
from conveyor.worker.constants import DeadReason, dead_letter_queue
from conveyor.worker.errors import Failure, storable_text
from conveyor.worker.ledger import Ledger, NewJob
from conveyor.worker.models import utcnow
from conveyor.worker.outcomes import Event, JobEvent, Outcomes

log = logging.getLogger("conveyor.deadletter")

REASON_HEADER = "x-conveyor-reason"
JOB_ID_HEADER = "x-conveyor-job-id"


def dead_letter_destination(queue: str, *, quorum: bool = False) -> Queue:
    """The durable queue holding ``queue``'s dead letters, on the broker's default exchange
    (as every Conveyor queue: :mod:`config.celery`); with ``quorum``, a quorum queue, so
    it is replicated as ``queue`` is and survives the loss of a RabbitMQ node."""
    name = dead_letter_queue(queue)
    arguments = {"x-queue-type": "quorum"} if quorum else None
    return Queue(name, Exchange(""), routing_key=name, queue_arguments=arguments)


def dead_letters_quorum(app: Celery, queue: str) -> bool:
    """Whether ``queue``'s dead letters go to a quorum queue: when ``queue`` is one."""
    settings: Settings | None = getattr(app, "settings", None)  # a ConveyorApp's
    return settings is not None and bool(settings.quorum_queues([queue]))


def raw_body(body: bytes | str | None) -> dict[str, Any]:
    """A message body as JSON data: text when it is UTF-8, else base64."""
    if body is None:
        return {"body": None}
    if isinstance(body, str):
        return {"body": body}
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(body).decode("ascii")}


MAX_NAME = 200
"""Longest task or queue name the ledger stores; a poison message's are cut to this."""


@dataclass(frozen=True, slots=True)
class Letter:
    """Everything one dead letter carries: to the ledger, the ``.dead`` queue and observers.

    ``attempt`` is the attempt this worker holds on the job, which the ledger write is
    fenced on; None for a message that never became an attempt (poison, unstorable),
    whose row is written whether or not one existed. ``ran=False`` marks a claim that
    found the attempts used up by crashes: it is taken back rather than counted.
    ``message`` is the message as it arrived, for letters that are not jobs.
    """

    job_id: str
    task: str
    queue: str
    reason: DeadReason
    failure: Failure
    payload: dict[str, Any]
    attempt: int | None = None
    ran: bool = True
    idempotency_key: str | None = None
    message: dict[str, Any] | None = None

    @property
    def attempts(self) -> int:
        """Attempts the job made."""
        if self.attempt is None:
            return 0
        return self.attempt if self.ran else self.attempt - 1

    def record(self) -> dict[str, Any]:
        """The body of the letter's message on the ``.dead`` queue: one shape for all."""
        return {
            "job_id": self.job_id,
            "task": self.task,
            "queue": self.queue,
            "reason": self.reason.value,
            "attempts": self.attempts,
            "idempotency_key": self.idempotency_key,
            "error_type": self.failure.error_type,
            "error_message": self.failure.message,
            "traceback": self.failure.traceback,
            "payload": self.payload,
            "message": self.message,
            "dead_at": utcnow().isoformat(),
        }


class DeadLetters:
    """Buries dead letters for one app: ledger, then ``.dead`` queue, then observers."""

    def __init__(self, app: Celery, ledger: Ledger, outcomes: Outcomes) -> None:
        self.app = app
        self.ledger = ledger
        self.outcomes = outcomes

    def bury(self, letter: Letter) -> bool:
        """Dead-letter ``letter``; False if another worker holds its job now (fenced).

        Raises :class:`sqlalchemy.exc.SQLAlchemyError` when the ledger cannot record it:
        the caller must leave the message unacknowledged, to come back later.
        """
        began = perf_counter()
        if letter.attempt is None:
            letter = self._record_message(letter)
        elif not self.ledger.fail(
            letter.job_id,
            letter.attempt,
            letter.failure,
            retry_in_s=None,
            dead_reason=letter.reason,
            ran=letter.ran,
        ):
            self.outcomes.emit(
                JobEvent(Event.LEASE_LOST, letter.job_id, letter.task, letter.queue, letter.attempt)
            )
            return False
        ledger_s = perf_counter() - began
        publish_dead_letter(self.app, letter)
        self.outcomes.emit(
            JobEvent(
                Event.DEAD,
                letter.job_id,
                letter.task,
                letter.queue,
                attempt=letter.attempts,
                reason=letter.reason,
                failure=letter.failure,
                payload=letter.payload,
                ledger_s=ledger_s,
                ledger_operation="fail",
            )
        )
        return True

    def _record_message(self, letter: Letter) -> Letter:
        """Write a message's dead row; if the ledger refuses its data, a minimal row."""
        task, queue = storable_text(letter.task[:MAX_NAME]), storable_text(letter.queue[:MAX_NAME])
        letter = replace(letter, task=task, queue=queue)
        unstorable = (DataError, UnicodeEncodeError)  # the driver cannot encode a surrogate
        try:
            self.ledger.bury(self._row(letter), letter.failure, letter.reason)
        except unstorable:
            # The ledger refuses the payload (a NUL, NaN, a lone surrogate) or the message's
            # own id (too long, ...): keep the facts without the payload, under that id if
            # the ledger takes it, else under a fresh one; the .dead queue gets the payload.
            try:
                self.ledger.bury(self._row(letter, payload={}), letter.failure, letter.reason)
            except unstorable:
                letter = replace(letter, job_id=str(uuid.uuid4()))
                self.ledger.bury(self._row(letter, payload={}), letter.failure, letter.reason)
        return letter

    @staticmethod
    def _row(letter: Letter, payload: dict[str, Any] | None = None) -> NewJob:
        return NewJob(
            id=letter.job_id,
            task=letter.task,
            queue=letter.queue,
            payload=letter.payload if payload is None else payload,
            max_attempts=0,
            idempotency_key=letter.idempotency_key,
        )


def publish_dead_letter(app: Celery, letter: Letter) -> bool:
    """Publish one letter to its queue's dead-letter queue; False if the broker refused.

    Never raises: the ledger already holds the dead job, so a broker hiccup here must not
    turn a recorded outcome into a redelivery.
    """
    queue, job_id = letter.queue, letter.job_id
    destination = dead_letter_destination(queue, quorum=dead_letters_quorum(app, queue))
    body = letter.record()
    headers = {REASON_HEADER: letter.reason.value, JOB_ID_HEADER: job_id}
    try:
        with app.producer_or_acquire() as producer:
            producer.publish(
                body,
                exchange=destination.exchange,
                routing_key=destination.routing_key,
                declare=[destination],
                serializer="json",
                headers=headers,
                delivery_mode=2,
                retry=True,
                retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
            )
    except Exception:
        log.exception("deadletter.publish_failed", extra={"queue": queue, "job_id": job_id})
        return False
    return True
