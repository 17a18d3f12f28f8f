"""The worker's consumer, with poison messages dead-lettered instead of dropped.

Celery's consumer handles messages it cannot run before any task code sees them: an
undecodable body is acknowledged and forgotten, an unknown task name or a disallowed
content type (anything but JSON, pickle included) is rejected, which on Redis deletes
it. Here each of them is recorded in the ledger as a dead job (when the message names a
job id) and moved to its queue's dead-letter queue with the reason, then acknowledged,
so the worker keeps consuming and the queue is never blocked.

Selected by Celery's ``worker_consumer`` option (:mod:`config.celery`).
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.exceptions import ContentDisallowed

from worker.constants import INVALID_MESSAGE
from worker.deadletter import publish_dead_letter, raw_body
from worker.ledger import Failure, NewJob
from worker.logs import job_fields
from worker.metrics import DEAD_LETTERED
from worker.transports import POISON_CONTENT_TYPE

log = logging.getLogger("conveyor.poison")

UNDECODABLE = "undecodable"
NOT_A_TASK = "not_a_task"
UNKNOWN_TASK = "unknown_task"
CONTENT_TYPE = "content_type"


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
    """Celery's consumer; messages that cannot become tasks go to the dead-letter queue."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if message.content_type == POISON_CONTENT_TYPE:
            self.bury(message, UNDECODABLE, ValueError("not a message envelope"))
        elif isinstance(exc, ContentDisallowed):
            self.bury(message, CONTENT_TYPE, exc)
        else:
            self.bury(message, UNDECODABLE, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self.bury(message, NOT_A_TASK, None)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self.bury(message, UNKNOWN_TASK, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        reason = CONTENT_TYPE if isinstance(exc, ContentDisallowed) else INVALID_MESSAGE
        self.bury(message, reason, exc)

    def bury(self, message: Any, reason: str, exc: Exception | None) -> None:
        """Record and dead-letter ``message``, ack it, then report it (:mod:`worker.sentry`).

        Acked once the dead letter is in the ledger or on the broker's dead-letter queue;
        if neither took it (both unreachable), it is requeued for another try, not lost.
        """
        headers = message.headers if isinstance(message.headers, dict) else {}
        queue = (message.delivery_info or {}).get("routing_key") or self.app.conf.task_default_queue
        # A message with no job id still gets a ledger row, so `conveyor dlq` shows it.
        job_id = str(headers.get("id") or uuid.uuid4())
        task = headers.get("task")
        error_type = type(exc).__name__ if exc is not None else "NotATask"
        failure = Failure(error_type=error_type, message=f"{reason}: {exc or 'no task header'}")
        payload = kwargs_of(message) or {"_raw": raw_body(message.body)}
        recorded = False
        try:
            self.app.ledger.bury(
                NewJob(
                    id=job_id,
                    task=str(task or "?"),
                    queue=queue,
                    payload=payload,
                    max_attempts=0,
                    idempotency_key=None,
                ),
                failure,
                reason,
            )
            recorded = True
            DEAD_LETTERED.labels(str(task or "?"), queue, reason).inc()
        except Exception:
            log.exception("poison.ledger_failed", extra=job_fields(job_id, task, queue))
        record = {
            "task": task,
            "headers": {k: str(v) for k, v in headers.items()},
            "content_type": message.content_type,
            "error_type": failure.error_type,
            "error_message": failure.message,
            **raw_body(message.body),
        }
        published = publish_dead_letter(
            self.app, queue=queue, reason=reason, job_id=job_id, record=record
        )
        log.error("job.poison", extra=job_fields(job_id, task, queue) | {"reason": reason})
        if recorded or published:
            message.ack_log_error(log, self.connection_errors)
            self.app.runtime.report_dead(
                job_id=job_id,
                task=str(task or "?"),
                queue=queue,
                attempt=0,
                reason=reason,
                failure=failure,
                payload=payload,
            )
        else:
            message.reject_log_error(log, self.connection_errors, requeue=True)
