"""Handing a job's message to the broker: one function, used by producers and the relay.

Messages are Celery protocol v2 with a JSON body; the payload is the message's kwargs and
the job id is the task id. On RabbitMQ every publish waits for the broker's confirm and
is ``mandatory``: a message the broker cannot route (its queue was deleted behind kombu's
back, which kombu's declaration cache does not notice) comes back as a return instead of
being dropped silently. A returned message or a connection error is retried a few times
with backoff, re-declaring the queue; if the broker still has not taken the message,
:class:`~worker.errors.EnqueueError` is raised and nothing was published.

:func:`publish_many` hands over a batch with one wait for the broker: on RabbitMQ the
batch is published on a channel of its own in confirm mode and the confirms are awaited
together; on Redis the pushes go in one pipeline (kombu's ``Producer.batch``). What the
broker did not confirm is published again with the same retries: a message that reached
the broker twice still runs once (the ledger's claim, P2).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Any

from amqp import spec
from celery import Celery
from kombu.exceptions import OperationalError
from kombu.messaging import Producer
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from conveyor.config.celery import broker_priority
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
CONFIRM_TIMEOUT_S = 30.0
"""How long :func:`publish_many` waits for RabbitMQ to confirm a batch."""
REPR_CHARS = 1024
"""Celery's own limit on the payload's repr in a message (what Flower shows)."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One job's message: what :func:`publish` and :func:`publish_many` hand the broker."""

    job_id: str
    task: str
    queue: str
    payload: dict[str, Any]
    priority: int | None = None
    idempotency_key: str | None = None

    def options(self, kind: BrokerKind, *, prioritized: bool) -> dict[str, Any]:
        """``send_task`` options: the job id is the task id; the priority, on a queue declared
        with priorities (``CONVEYOR_QUEUES``), the broker's for the job's
        (:func:`~config.celery.broker_priority`), elsewhere none, so that every broker runs
        such a queue first in, first out; a JSON payload's repr is cheap (Celery's
        ``saferepr`` cost more than the rest of building the message)."""
        amqp = kind is BrokerKind.RABBITMQ
        options: dict[str, Any] = {
            "task_id": self.job_id,
            "queue": self.queue,
            "priority": broker_priority(self.priority, kind) if prioritized else None,
            "headers": {IDEMPOTENCY_HEADER: self.idempotency_key} if self.idempotency_key else None,
            "argsrepr": "()",
            "kwargsrepr": repr(self.payload)[:REPR_CHARS],
        }
        if amqp:
            options["mandatory"] = True
        return options

    def send(self, app: ConveyorApp, producer: Any) -> None:
        """Hand the message to ``producer`` (no retry here: the callers retry)."""
        settings = app.settings
        options = self.options(
            settings.broker_kind, prioritized=settings.queue(self.queue).priority
        )
        app.send_task(self.task, kwargs=self.payload, producer=producer, retry=False, **options)


class Unroutable(Exception):
    """RabbitMQ returned a mandatory message: no queue was bound to take it."""


def _send_once(app: Celery, message: Outgoing, amqp: bool) -> None:
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
            message.send(app, producer)
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
    message = Outgoing(job_id, task, queue, payload, priority, idempotency_key)
    amqp = app.settings.broker_kind is BrokerKind.RABBITMQ
    try:
        _retrying()(_send_once, app, message, amqp)
    except Exception as exc:  # refused login, closed channel, ...: the broker has nothing
        raise EnqueueError(f"the broker did not take job {message.job_id}: {exc}") from exc


def _retrying() -> Retrying:
    return Retrying(
        stop=stop_after_attempt(PUBLISH_ATTEMPTS),
        wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
        retry=retry_if_exception_type((Unroutable, OperationalError, ConnectionError, OSError)),
        reraise=True,
    )


def publish_many(app: ConveyorApp, messages: Sequence[Outgoing]) -> dict[str, EnqueueError]:
    """Publish a batch with one wait for the broker; returns the failures by job id.

    Every message absent from the result is on the broker. What the broker did not
    confirm (nacked, returned unroutable, not confirmed within :data:`CONFIRM_TIMEOUT_S`,
    or all of it after a connection error) is published again, as a smaller batch, with
    :func:`publish`'s retries; what is still unconfirmed after the last is in the result.
    """
    pending = list(messages)
    amqp = app.settings.broker_kind is BrokerKind.RABBITMQ
    send = _send_confirmed_batch if amqp else _send_pipelined_batch
    try:
        for attempt in _retrying():
            with attempt:
                if pending:
                    pending = send(app, pending)
                if pending:
                    raise Unroutable(f"the broker did not confirm {len(pending)} messages")
    except Exception as exc:  # the broker has not confirmed these
        log.warning("publish.batch_failed", extra={"messages": len(pending), "error": str(exc)})
        return {
            message.job_id: EnqueueError(f"the broker did not take job {message.job_id}: {exc}")
            for message in pending
        }
    return {}


def _send_pipelined_batch(app: ConveyorApp, messages: Sequence[Outgoing]) -> list[Outgoing]:
    """Redis: every push of the batch in one pipeline (kombu flushes it every 1,000).

    Redis confirms nothing: a pipeline that ran has every message; one that failed raises.
    """
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection(max_retries=CONNECT_RETRIES)
        with producer.batch():
            for message in messages:
                message.send(app, producer)
    return []


class _Confirms:
    """RabbitMQ's confirms of one channel's publishes, delivery tags 1, 2, ... in order."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.settled: set[int] = set()
        self.nacked: set[int] = set()
        self.returned: set[str] = set()
        self._lowest = 1  # every tag below this one is settled

    def ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, nack=False)

    def nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, nack=True)

    def returned_message(self, _exc: Any, _exchange: Any, _key: Any, message: Any) -> None:
        self.returned.add(str(message.properties.get("correlation_id")))

    def _settle(self, tag: int, multiple: bool, *, nack: bool) -> None:
        for settled in range(self._lowest, tag + 1) if multiple else (tag,):
            if settled not in self.settled:
                self.settled.add(settled)
                if nack:
                    self.nacked.add(settled)
        while self._lowest in self.settled:
            self._lowest += 1

    @property
    def complete(self) -> bool:
        return len(self.settled) >= self.total


def _send_confirmed_batch(app: ConveyorApp, messages: Sequence[Outgoing]) -> list[Outgoing]:
    """RabbitMQ: publish every message, then await their confirms together.

    A channel of the batch's own, so that its delivery tags count this batch's messages
    from 1. Returns the messages that were not confirmed.
    """
    confirms = _Confirms(len(messages))
    with app.producer_or_acquire() as pooled:
        pooled.connection.ensure_connection(max_retries=CONNECT_RETRIES)
        channel = pooled.connection.channel()
        try:
            channel.confirm_select()
            channel._confirm_selected = True
            # Publish without waiting: the confirms are awaited below, all at once.
            channel.basic_publish = channel._basic_publish
            channel.events["basic_ack"].add(confirms.ack)
            channel.events["basic_nack"].add(confirms.nack)
            channel.events["basic_return"].add(confirms.returned_message)
            producer = Producer(channel)  # type: ignore[no-untyped-call]
            for message in messages:
                message.send(app, producer)
            deadline = monotonic() + CONFIRM_TIMEOUT_S
            while not confirms.complete and monotonic() < deadline:
                channel.wait([spec.Basic.Ack, spec.Basic.Nack], timeout=deadline - monotonic())
            if confirms.returned:  # declared behind our back? declare again on the retry
                pooled.connection.declared_entities.clear()
        finally:
            with suppress(Exception):  # what it confirmed stays confirmed
                channel.close()
    return [
        message
        for tag, message in enumerate(messages, 1)
        if tag not in confirms.settled
        or tag in confirms.nacked
        or message.job_id in confirms.returned
    ]


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
