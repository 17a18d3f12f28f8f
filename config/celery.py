"""The one place that turns :class:`~config.settings.Settings` into Celery options.

No Celery option name is written anywhere else in Conveyor. Each choice below is a
guarantee that plain Celery's defaults do not give; the comments say which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.config.settings import BrokerKind, QueueType, Settings
from conveyor.config.tls import broker_ssl
from conveyor.worker.constants import MAX_PRIORITY

if TYPE_CHECKING:
    from kombu.entity import Queue


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery options for ``settings``; pass to ``app.conf.update``."""
    options: dict[str, Any] = {
        "broker_url": settings.broker,
        # Retry the first connection too, explicitly (Celery warns when it is implicit).
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": 100,
        # JSON only: a serializer that can execute code (pickle) is never accepted.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_protocol": 2,
        # Acknowledge after the job ran, and requeue when the process running it dies or
        # hits its hard time limit: the ledger counts the attempt, so this cannot loop.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_timeout": False,
        "task_acks_on_failure": True,
        # Stop running a job whose message the broker will re-deliver after a lost connection.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        "worker_concurrency": settings.worker_concurrency,
        "task_time_limit": settings.task_time_limit_s,
        # The ledger holds results and states; Celery's result backend is not used.
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        "result_backend": None,
        "task_default_queue": settings.default_queue,
        "task_create_missing_queues": True,
        # Queues live on the broker's default exchange ("", routing by queue name): Conveyor
        # declares no exchange a foreign client could declare differently (celery-node's
        # `default`, auto-delete, stopped every worker whose default queue was `default`).
        # Quorum queues keep Celery's exchange per queue, which its delayed delivery binds to.
        "task_default_exchange": "" if on_default_exchange(settings) else settings.default_queue,
        # Task events cost a publish per step of every job (and, on RabbitMQ, a confirm per
        # enqueue): workers send them only once a monitor asks (`celery control
        # enable_events`, which Flower sends), unless CONVEYOR_TASK_EVENTS says always.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "enable_utc": True,
        "timezone": "UTC",
        # Poison messages (undecodable, unknown task, not JSON) are dead-lettered, not dropped.
        "worker_consumer": "conveyor.worker.poison:Consumer",
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }
    kind = settings.broker_kind
    if kind is BrokerKind.REDIS:
        # One visibility timeout, set alike everywhere Celery reads it.
        # Garbage pushed onto a Redis list becomes a poison message, not a worker crash.
        options["broker_transport"] = "conveyor.worker.transports:RedisTransport"
        # A list per priority level, 0 to 9 (kombu's default is four levels, 0, 3, 6, 9).
        transport = {
            "visibility_timeout": settings.visibility_timeout_s,
            "priority_steps": list(range(MAX_PRIORITY + 1)),
        }
        if settings.is_sentinel:
            # The same poison-safe channel, on the primary the Sentinels name; the master
            # name goes to the result backend too, or it cannot find the primary.
            options["broker_transport"] = "conveyor.worker.transports:SentinelTransport"
            transport["master_name"] = settings.redis_sentinel_master
        options["broker_transport_options"] = transport
        options["result_backend_transport_options"] = dict(transport)
    elif kind is BrokerKind.RABBITMQ:
        # Publisher confirms: a publish returns only once the broker has the message.
        options["broker_transport_options"] = {"confirm_publish": True}
        if settings.queue_type is QueueType.QUORUM:
            options["task_default_queue_type"] = "quorum"
            options["task_default_exchange_type"] = "topic"
            # A queue Celery was not told about (task_create_missing_queues) takes its type
            # and exchange from these two since Celery 5.6, not from the defaults above:
            # without them it is declared classic, on a direct exchange.
            options["task_create_missing_queue_type"] = "quorum"
            options["task_create_missing_queue_exchange_type"] = "topic"
    use_ssl = broker_ssl(settings)
    if use_ssl is not None:
        # amqps:// and rediss:// verify the server's certificate and host name; kombu's own
        # default for rediss:// without options verifies nothing (config/tls.py).
        options["broker_use_ssl"] = use_ssl
    if settings.queues:
        options["task_queues"] = declared_queues(settings)
    return options


def declared_queues(settings: Settings) -> list[Queue]:
    """The queues of ``CONVEYOR_QUEUES``, as kombu declares them.

    On RabbitMQ a priority queue gets ``x-max-priority`` and a quorum queue its type and an
    exchange of its own (topic: Celery's delayed delivery binds to it); other queues sit on
    the default exchange as undeclared ones do. Redis ignores the arguments.
    """
    from kombu.entity import Exchange, Queue  # here: reading the settings needs no kombu

    rabbitmq = settings.broker_kind is BrokerKind.RABBITMQ
    queues = []
    for name, spec in sorted(settings.queues.items()):
        arguments: dict[str, Any] = {}
        if rabbitmq and spec.priority:
            arguments["x-max-priority"] = MAX_PRIORITY
        if rabbitmq and settings.queue_type_of(name) is QueueType.QUORUM:
            arguments["x-queue-type"] = "quorum"
            exchange = Exchange(name, type="topic")  # type: ignore[no-untyped-call]
        elif on_default_exchange(settings):
            exchange = Exchange("")  # type: ignore[no-untyped-call]
        else:
            exchange = Exchange(name, type="direct")  # type: ignore[no-untyped-call]
        queue = Queue(name, exchange, routing_key=name, queue_arguments=arguments or None)  # type: ignore[no-untyped-call]
        queues.append(queue)
    return queues


def broker_priority(priority: int | None, kind: BrokerKind) -> int | None:
    """A job's priority (0 to 9, 9 first; none is 0) as the broker orders it.

    RabbitMQ runs higher numbers first, as Conveyor does. kombu's Redis transport runs 0
    first and treats a message without a priority as 0, so there the scale is reversed and
    a job without one is sent as the last level.
    """
    if kind is not BrokerKind.REDIS:
        return priority
    return MAX_PRIORITY - (priority or 0)


def worker_options(settings: Settings, queues: list[str]) -> dict[str, Any]:
    """Celery options of one ``conveyor worker`` consuming ``queues``: its prefetch is the
    smallest of its queues' (``CONVEYOR_QUEUES``), so a long-job queue that asks for 1 gets 1
    even beside a short-job queue; run one worker per queue class to give each its own."""
    prefetch = min(settings.queue(name).prefetch or settings.prefetch_multiplier for name in queues)
    return {"worker_prefetch_multiplier": prefetch}


def on_default_exchange(settings: Settings) -> bool:
    """Whether Conveyor's queues are declared on the default exchange (see ``celery_config``)."""
    return (
        settings.queue_type is not QueueType.QUORUM
        or settings.broker_kind is not BrokerKind.RABBITMQ
    )


HARD_LIMIT_GRACE_S = 5
"""Seconds between a job's soft time limit (``timeout_s``) and its hard limit."""


def task_options(
    *,
    name: str,
    queue: str | None,
    timeout_s: float,
    throws: tuple[type[BaseException], ...] = (),
) -> dict[str, Any]:
    """Celery task options for one job type (:func:`worker.app.create_app` registers it).

    ``throws`` are the exceptions that end a task as an expected failure: Celery logs them
    without a traceback at INFO, and Sentry's and OpenTelemetry's Celery integrations do not
    report them (Conveyor's dead letters, which the outcome chain has reported already).
    """
    options: dict[str, Any] = {
        "name": name,
        "bind": True,
        # This app's own: a shared task would be added to every app built later in the same
        # process (tests, the pytest plugin), bound to this app's runtime and ledger.
        "shared": False,
        "typing": False,
        "throws": throws,
        # Retries are the ledger's business; Celery's retry only republishes a message the
        # ledger could not take yet (Postpone), which must never run out (its default is 3).
        "max_retries": None,
        "soft_time_limit": timeout_s,
        "time_limit": timeout_s + HARD_LIMIT_GRACE_S,
    }
    if queue is not None:
        options["queue"] = queue
    return options


def retry_later(countdown_s: float) -> dict[str, Any]:
    """Options of ``Task.retry`` for a message put back without counting an attempt."""
    return {"countdown": countdown_s}


def worker_argv(
    *,
    queues: str,
    pool: str,
    loglevel: str,
    concurrency: int | None,
    hostname: str,
    autoscale: tuple[int, int] | None = None,
) -> list[str]:
    """The arguments of ``app.worker_main`` for ``conveyor worker``.

    Without mingle and gossip: mingle spends a second of every start asking the other
    workers for their revoked task ids and clocks, and gossip makes every worker consume
    every other worker's heartbeats; Conveyor uses neither (a job is cancelled in the
    ledger, never revoked, and no worker watches another). Flower and the task events do
    not depend on them.
    """
    argv = ["worker", "--queues", queues, "--pool", pool, "--loglevel", loglevel]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    if autoscale is not None:
        argv += ["--autoscale", f"{autoscale[0]},{autoscale[1]}"]
    return [*argv, "--hostname", hostname, "--without-mingle", "--without-gossip"]
