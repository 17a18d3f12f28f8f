"""Dramatiq for ``conveyor bench``: its default settings, one actor.

``dramatiq conveyor.worker.bench.dramatiq_jobs --processes 2 --queues QUEUE`` runs it; the
broker (RabbitMQ or Redis) comes from ``BENCH_BROKER_URL`` and the queue from
``BENCH_QUEUE``. Importing it connects to nothing.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from conveyor.worker.bench.probe import record


def make_broker(url: str) -> RabbitmqBroker | RedisBroker:
    """Dramatiq's broker for ``url``. kombu reads ``amqp://host//`` as the vhost ``/``;
    pika, under Dramatiq, needs it spelled ``%2F``."""
    if url.startswith("amqp"):
        if url.endswith("//"):
            url = url[:-1] + "%2F"
        return RabbitmqBroker(url=url)
    return RedisBroker(url=url)  # type: ignore[no-untyped-call]


broker = make_broker(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13"))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_job", queue_name=os.environ.get("BENCH_QUEUE", "bench"))
def bench_job(**payload: Any) -> None:
    """One benchmark job (:func:`~worker.bench.probe.record`)."""
    record(payload)
