"""Handing a job's message to the broker: one function, used by producers and the relay.

Messages are Celery protocol v2 with a JSON body; the payload is the message's kwargs and
the job id is the task id. On RabbitMQ the publish waits for the broker's confirm
(``confirm_publish``), so a return means the broker has the message.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker.constants import IDEMPOTENCY_HEADER
from worker.models import Job


def publish(
    app: Celery,
    *,
    job_id: str,
    task: str,
    queue: str,
    payload: dict[str, Any],
    priority: int | None = None,
    idempotency_key: str | None = None,
) -> None:
    """Publish one job's message; raises whatever the broker connection raised."""
    app.send_task(
        task,
        kwargs=payload,
        task_id=job_id,
        queue=queue,
        priority=priority,
        headers={IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else None,
    )


def publish_row(app: Celery, job: Job) -> None:
    """Publish the message for a ledger row (the relay's path)."""
    publish(
        app,
        job_id=job.id,
        task=job.task,
        queue=job.queue,
        payload=job.payload,
        priority=job.priority,
        idempotency_key=job.idempotency_key,
    )
