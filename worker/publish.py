"""Handing a job's message to the broker: one function, used by producers and the relay.

Messages are Celery protocol v2 with a JSON body; the payload is the message's kwargs and
the job id is the task id. On RabbitMQ every publish waits for the broker's confirm and
is ``mandatory``: a message the broker cannot route (its queue was deleted behind kombu's
back, which kombu's declaration cache does not notice) comes back as a return instead of
being dropped silently. A returned message or a connection error is retried a few times
with backoff, re-declaring the queue; if the broker still has not taken the message,
:class:`~worker.errors.EnqueueError` is raised and nothing was published.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery import Celery
from kombu.exceptions import OperationalError
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from conveyor.config.settings import BrokerKind
from conveyor.worker.constants import IDEMPOTENCY_HEADER
from conveyor.worker.errors import EnqueueError
from conveyor.worker.models import Job
from conveyor.worker.observability.tracing import relay_span

if TYPE_CHECKING:
    from conveyor.worker.app import ConveyorApp

log = logging.getLogger("conveyor.publish")

PUBLISH_ATTEMPTS = 4
CONNECT_RETRIES = 2
"""Connection retries within one publish attempt (a broker that is down fails in ~2 s)."""


class Unroutable(Exception):
    """RabbitMQ returned a mandatory message: no queue was bound to take it."""


def _send_once(
    app: Celery, task: str, payload: dict[str, Any], options: dict[str, Any], amqp: bool
) -> None:
    returned: list[str] = []

    def on_return(_exc: Any, _exchange: Any, routing_key: str, _message: Any) -> None:
        returned.append(routing_key)

    with app.producer_or_acquire() as producer:
        # Connect (if not connected) with a short retry here: kombu's own default is to
        # retry for several seconds per publish, which the attempts below would multiply.
        producer.connection.ensure_connection(
            max_retries=CONNECT_RETRIES, interval_start=0.2, interval_step=0.4, interval_max=1.0
        )
        if amqp:
            producer.channel.events["basic_return"].add(on_return)
        try:
            app.send_task(task, kwargs=payload, producer=producer, retry=False, **options)
        finally:
            if amqp:
                producer.channel.events["basic_return"].discard(on_return)
        if returned:
            # Forget what this connection believes it declared, so the retry declares again.
            producer.connection.declared_entities.clear()
            raise Unroutable(f"no queue took the message for {returned[0]!r}")


def publish(
    app: ConveyorApp,
    *,
    job_id: str,
    task: str,
    queue: str,
    payload: dict[str, Any],
    priority: int | None = None,
    idempotency_key: str | None = None,
) -> None:
    """Publish one job's message, or raise :class:`~worker.errors.EnqueueError`."""
    amqp = app.settings.broker_kind is BrokerKind.RABBITMQ
    options: dict[str, Any] = {
        "task_id": job_id,
        "queue": queue,
        "priority": priority,
        "headers": {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else None,
    }
    if amqp:
        options["mandatory"] = True
    retrying = Retrying(
        stop=stop_after_attempt(PUBLISH_ATTEMPTS),
        wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
        retry=retry_if_exception_type((Unroutable, OperationalError, ConnectionError, OSError)),
        reraise=True,
    )
    try:
        retrying(_send_once, app, task, payload, options, amqp)
    except Exception as exc:  # refused login, closed channel, ...: the broker has nothing
        raise EnqueueError(f"the broker did not take job {job_id}: {exc}") from exc


def publish_row(app: ConveyorApp, job: Job) -> None:
    """Publish the message for a ledger row (the relay's path), in the trace of its enqueue."""
    with relay_span(job):
        publish(
            app,
            job_id=job.id,
            task=job.task,
            queue=job.queue,
            payload=job.payload,
            priority=job.priority,
            idempotency_key=job.idempotency_key,
        )
