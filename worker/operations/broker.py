"""Broker queues that hold messages no worker consumes, for ``conveyor queues``, the relay's
``/metrics`` and the ``ConveyorUnconsumedQueue`` alert.

The ledger knows every job Conveyor accepted, but not a message a foreign producer put on
a queue no worker consumes (a typo in a queue name, Celery's default ``celery`` before a
worker consumed it, a queue whose workers were all scaled away): such a message sits
there unseen. This module asks the broker instead.

Which queues it looks at: on Redis every list of the broker's database (each queue is a
list); on RabbitMQ every queue the management API lists when ``CONVEYOR_BROKER_API_URL``
is set, and otherwise the queues it can name: Celery's ``celery``, the default queue,
every queue the ledger or the job catalog knows. Dead-letter queues (``Q.dead``: nobody
consumes them by design), Celery's own control and event queues, and paused queues (held
on purpose: ``conveyor queues`` shows them as paused) are left out.

Who consumes: on RabbitMQ the broker's consumer count; on Redis, which keeps no such
count, the queues the workers that answer remote control say they consume (asked only
when some queue holds messages).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from conveyor.config.settings import BrokerKind
from conveyor.worker.constants import CELERY_QUEUE, DEAD_LETTER_SUFFIX
from conveyor.worker.observability.masking import mask

log = logging.getLogger("conveyor.broker")

PRIORITY_SEPARATOR = "\x06\x16"
"""kombu's Redis transport keeps a queue's priority levels in lists ``Q``, ``Q\\x06\\x163``,
…: their messages count toward ``Q``."""

INTERNAL_MARKERS = ("pidbox", "celeryev")
"""Celery's remote-control replies and event queues: not job queues."""

MANAGEMENT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class BrokerQueue:
    name: str
    messages: int
    """Messages ready on the broker (RabbitMQ: not counting unacknowledged ones)."""
    consumers: int | None
    """RabbitMQ's consumer count; None on Redis, which keeps none."""


def is_job_queue(name: str) -> bool:
    """Whether ``name`` is a queue jobs wait in (not a dead-letter or Celery's own)."""
    return (
        bool(name)
        and not name.endswith(DEAD_LETTER_SUFFIX)
        and not any(marker in name for marker in INTERNAL_MARKERS)
    )


def unconsumed(app: Any, known: Iterable[str], *, paused: Iterable[str] = ()) -> list[BrokerQueue]:
    """Queues that hold messages no worker consumes, by name (see the module's docstring).
    ``known``: queue names the caller knows of (the ledger's)."""
    settings = app.settings
    names = {CELERY_QUEUE, settings.default_queue, *known} | listed(app)
    names = {name for name in names if is_job_queue(name)} - set(paused)
    waiting = [queue for queue in depths(app, sorted(names)) if queue.messages]
    if not waiting:
        return []
    if settings.broker_kind is BrokerKind.RABBITMQ:
        return [queue for queue in waiting if not queue.consumers]
    consumed = consumed_by_workers(app)
    return [queue for queue in waiting if queue.name not in consumed]


def unconsumed_of(app: Any, queues: list[dict[str, Any]]) -> list[BrokerQueue] | None:
    """:func:`unconsumed` for the queues of a :func:`~worker.operations.stats.queue_stats`
    answer (their names known, the paused ones left out); None, logged, when the broker
    cannot be asked."""
    from kombu.exceptions import OperationalError

    with app.connection_for_read() as connection:
        errors = (*connection.connection_errors, *connection.channel_errors)
    paused = [queue["name"] for queue in queues if queue["paused"]]
    try:
        return unconsumed(app, [queue["name"] for queue in queues], paused=paused)
    except (*errors, OperationalError, OSError):
        log.warning("broker.queues_not_checked", exc_info=True)
        return None


def depths(app: Any, names: Iterable[str]) -> list[BrokerQueue]:
    """Each named queue that exists on the broker, with its message and consumer counts."""
    found = []
    is_redis = app.settings.broker_kind is BrokerKind.REDIS
    with app.connection_for_read() as connection:
        for name in names:
            channel = connection.channel()
            try:
                _, messages, consumers = channel.queue_declare(name, passive=True)
            except connection.channel_errors:
                continue  # no such queue (RabbitMQ closed the channel; Redis: an empty list)
            finally:
                channel.close()
            found.append(BrokerQueue(name, int(messages), None if is_redis else int(consumers)))
    return found


def listed(app: Any) -> set[str]:
    """The queues the broker can list: Redis's lists, RabbitMQ's through its management API
    (when configured); an empty set where it cannot."""
    settings = app.settings
    if settings.broker_kind is BrokerKind.REDIS:
        with app.connection_for_read() as connection:
            client = connection.default_channel.client
            return {
                key.decode(errors="replace").split(PRIORITY_SEPARATOR)[0]
                for key in client.scan_iter(count=1000, _type="list")
            }
    if settings.broker_kind is BrokerKind.RABBITMQ and settings.broker_api_url is not None:
        return management_queues(settings.broker_api_url.get_secret_value(), settings.broker)
    return set()


def management_queues(api_url: str, broker_url: str) -> set[str]:
    """Queue names of the broker's virtual host, from RabbitMQ's management API."""
    import httpx

    vhost = urlsplit(broker_url).path.removeprefix("/") or "/"
    url = api_url.rstrip("/") + "/queues/" + quote(vhost, safe="")
    try:
        answer = httpx.get(url, params={"columns": "name"}, timeout=MANAGEMENT_TIMEOUT_S)
        answer.raise_for_status()
    except httpx.HTTPError as exc:
        # httpx quotes the URL, password included: "... for url 'http://user:{password}@...'".
        log.warning("broker.management_api_failed", extra={"error": mask(str(exc))})
        return set()
    return {entry["name"] for entry in answer.json()}


def consumed_by_workers(app: Any) -> set[str]:
    """Every queue some worker that answers remote control consumes."""
    active = app.control.inspect(timeout=1.0).active_queues() or {}
    return {queue["name"] for queues in active.values() for queue in queues or []}
