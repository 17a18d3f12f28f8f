"""Dead letters on the broker: each queue ``Q`` has ``Q.dead`` (see :mod:`worker.constants`).

The ledger is the record of a dead job (``conveyor dlq`` reads it); the broker's
dead-letter queue carries the same facts as a message, for tools that watch queues
(RabbitMQ's management UI, KEDA, a consumer of your own). Conveyor moves dead messages
itself on both brokers, so each one carries why it died — the exception, its message and
traceback — which a broker-side dead-letter exchange cannot add.

A dead-letter message is a plain JSON message, not a Celery task: no worker will run it
by mistake. Its headers say ``x-conveyor-reason`` and ``x-conveyor-job-id``.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from worker.constants import dead_letter_queue
from worker.models import utcnow

log = logging.getLogger("conveyor.deadletter")

REASON_HEADER = "x-conveyor-reason"
JOB_ID_HEADER = "x-conveyor-job-id"


def dead_letter_destination(queue: str) -> Queue:
    """The durable queue (and its direct exchange) holding ``queue``'s dead letters."""
    name = dead_letter_queue(queue)
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name)


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


def publish_dead_letter(
    app: Celery, *, queue: str, reason: str, job_id: str | None, record: dict[str, Any]
) -> bool:
    """Publish one dead letter to ``queue``'s dead-letter queue; False if the broker refused.

    Never raises: the ledger already holds the dead job, so a broker hiccup here must not
    turn a recorded outcome into a redelivery.
    """
    destination = dead_letter_destination(queue)
    body = {"queue": queue, "reason": reason, "job_id": job_id, "dead_at": utcnow().isoformat()}
    body.update(record)
    headers = {REASON_HEADER: reason, JOB_ID_HEADER: job_id or ""}
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
