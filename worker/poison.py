"""The worker's consumer, with poison messages dead-lettered instead of dropped.

Celery's consumer handles messages it cannot run before any task code sees them: an
undecodable body is acknowledged and forgotten, an unknown task name or a disallowed
content type (anything but JSON, pickle included) is rejected, which on Redis deletes
it. Here each of them is buried like any dead job (:meth:`worker.deadletter.DeadLetters.bury`:
a dead row in the ledger, its queue's dead-letter queue, the outcome chain), under the
job id the message names or a fresh one, then acknowledged, so the worker keeps consuming
and the queue is never blocked.

What happens to the message:

- buried → **acknowledged**;
- the ledger cannot be reached → **requeued** after a pause (:data:`LEDGER_PAUSE_S`), to
  be buried when the ledger is back: never acknowledged without a record.

Selected by Celery's ``worker_consumer`` option (:mod:`config.celery`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.exceptions import ContentDisallowed
from sqlalchemy.exc import SQLAlchemyError

from conveyor.worker.constants import DeadReason
from conveyor.worker.deadletter import Letter, raw_body
from conveyor.worker.errors import PoisonMessage, failure_of
from conveyor.worker.observability.logs import job_fields
from conveyor.worker.pauses import holding_paused
from conveyor.worker.transports import POISON_CONTENT_TYPE

log = logging.getLogger("conveyor.poison")

LEDGER_PAUSE_S = 1.0
"""How long the consumer waits before requeueing a poison message the ledger could not
record: the ledger is down, so nothing else can make progress meanwhile either."""


def kwargs_of(message: Any) -> dict[str, Any]:
    """The job payload (kwargs) of a protocol v2 JSON body, or {} if there is none."""
    if message.content_type != "application/json":
        return {}
    try:
        body = json.loads(message.body)
    except (TypeError, ValueError):
        return {}
    if isinstance(body, list) and len(body) == 3 and isinstance(body[1], dict):
        return body[1]
    return {}


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer; messages that cannot become tasks go to the dead-letter queue,
    messages of a paused queue go back to it (:mod:`worker.pauses`)."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        return holding_paused(self, super().create_task_handler(*args, **kwargs))

    def add_task_queue(self, queue: str, exchange: Any = None, *args: Any, **options: Any) -> None:
        """Consume ``queue`` (remote control's ``add_consumer``, a resumed pause). A queue
        new to this worker is declared the way ``-Q`` declares it (on the broker's default
        exchange, see :class:`worker.app.DefaultExchangeAMQP`), not on an exchange named
        after it, as Celery would."""
        if exchange is None and not options:
            _ = self.app.amqp.queues[queue]  # Queues.__missing__ creates it as -Q does
        super().add_task_queue(queue, exchange, *args, **options)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if message.content_type == POISON_CONTENT_TYPE:
            self.bury(message, DeadReason.UNDECODABLE, PoisonMessage("not a message envelope"))
        elif isinstance(exc, ContentDisallowed):
            self.bury(message, DeadReason.CONTENT_TYPE, exc)
        else:
            self.bury(message, DeadReason.UNDECODABLE, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self.bury(message, DeadReason.NOT_A_TASK, PoisonMessage("no task header"))

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self.bury(message, DeadReason.UNKNOWN_TASK, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        reason = (
            DeadReason.CONTENT_TYPE
            if isinstance(exc, ContentDisallowed)
            else DeadReason.INVALID_MESSAGE
        )
        self.bury(message, reason, exc)

    def bury(self, message: Any, reason: DeadReason, exc: Exception) -> None:
        """Dead-letter ``message`` and acknowledge it; requeue it if the ledger is down."""
        letter = letter_of(message, reason, exc, self.app.settings.default_queue)
        try:
            self.app.dead_letters.bury(letter)
        except SQLAlchemyError:
            # Requeued: it is buried when the ledger is back, never acked without a record.
            log.warning("poison.ledger_unavailable", extra=job_fields(letter.job_id, letter.task))
            time.sleep(LEDGER_PAUSE_S)
            message.reject_log_error(log, self.connection_errors, requeue=True)
            return
        message.ack_log_error(log, self.connection_errors)  # acknowledged: it is buried


def letter_of(message: Any, reason: DeadReason, exc: Exception, default_queue: str) -> Letter:
    """The dead letter of a message that never became a task."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    queue = (message.delivery_info or {}).get("routing_key") or default_queue
    return Letter(
        # A message with no job id still gets a ledger row, so `conveyor dlq` shows it.
        job_id=str(headers.get("id") or uuid.uuid4()),
        task=str(headers.get("task") or "?"),
        queue=queue,
        reason=reason,
        failure=failure_of(exc, f"{reason}: {exc}"),
        payload=kwargs_of(message) or {"_raw": raw_body(message.body)},
        message={
            "id": headers.get("id"),
            "headers": {k: str(v) for k, v in headers.items()},
            "content_type": message.content_type,
            **raw_body(message.body),
        },
    )
