"""The Celery app, built in one place.

:func:`create_app` reads nothing from the environment itself: it takes the settings,
imports the task modules the deployment names (``CONVEYOR_TASK_MODULES``; the reference
jobs of ``conveyor.tasks`` only when named there, see :data:`REFERENCE_JOBS`) and turns
each registered :class:`~worker.jobs.JobSpec` into a Celery task whose body is
:meth:`worker.runtime.Runtime.execute`. Building the app connects to nothing.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.app.amqp import AMQP
from celery.exceptions import Ignore, Retry

from conveyor.config import Settings, celery_config
from conveyor.config.celery import on_default_exchange, retry_later, task_options
from conveyor.config.settings import BrokerKind
from conveyor.worker.deadletter import DeadLetters
from conveyor.worker.delivery import delivery_from_request
from conveyor.worker.embedded import tune_embedded_transport
from conveyor.worker.errors import DeadLettered, Redundant, RetryScheduled
from conveyor.worker.jobs import REGISTRY, JobSpec, import_task_modules
from conveyor.worker.leader import RelayStep
from conveyor.worker.ledger import Ledger
from conveyor.worker.observability.probes import ConsumingStep
from conveyor.worker.observability.tracing import init_tracing
from conveyor.worker.outcomes import Outcomes, default_observers
from conveyor.worker.pauses import PauseStep
from conveyor.worker.runtime import Postpone, Runtime
from conveyor.worker.timers import CompactTimers

REFERENCE_JOBS = ("conveyor.tasks.demo", "conveyor.tasks.webhooks")
"""The reference jobs shipped with Conveyor: imported only where a deployment (or
``conveyor demo``) names them in ``CONVEYOR_TASK_MODULES``."""


class DefaultExchangeAMQP(AMQP):  # type: ignore[misc]
    """Celery's AMQP, with the queues it creates on demand (``-Q name``, ``send_task(queue=)``)
    put on the broker's default exchange instead of an exchange named after each queue
    (Celery documents ``autoexchange`` for this)."""

    @staticmethod
    def autoexchange(_name: str) -> None:
        return None


class ConveyorApp(Celery):  # type: ignore[misc]
    """A Celery app that also carries Conveyor's settings, ledger, outcome chain and runtime."""

    settings: Settings
    ledger: Ledger
    outcomes: Outcomes
    dead_letters: DeadLetters
    runtime: Runtime


def create_app(settings: Settings) -> ConveyorApp:
    """Build the Celery app for ``settings``, with one task per registered job."""
    if settings.broker_kind is BrokerKind.EMBEDDED:
        tune_embedded_transport()
    amqp = DefaultExchangeAMQP if on_default_exchange(settings) else AMQP
    app = ConveyorApp("conveyor", set_as_current=False, amqp=amqp)
    app.conf.update(celery_config(settings))
    app.settings = settings
    app.ledger = Ledger(
        settings.database,
        pool_size=settings.db_pool_size,
        replica_url=settings.database_replica,
    )
    app.outcomes = Outcomes(default_observers(broker=settings.broker_kind.value))
    app.dead_letters = DeadLetters(app, app.ledger, app.outcomes)
    app.runtime = Runtime(
        ledger=app.ledger,
        dead_letters=app.dead_letters,
        outcomes=app.outcomes,
        lease_s=settings.job_lease_s,
    )
    app.steps["consumer"].add(ConsumingStep)  # liveness: is the worker still consuming?
    app.steps["consumer"].add(CompactTimers)  # memory: forget cancelled time limits
    app.steps["consumer"].add(PauseStep)  # consume no queue the ledger says is paused
    if settings.relay_in_workers:
        app.steps["worker"].add(RelayStep)  # the relay's duty, while this worker leads
    import_task_modules(settings)
    for spec in REGISTRY.values():
        _register(app, spec)
    init_tracing(settings)  # once per process; off unless CONVEYOR_OTLP_ENDPOINT is set
    return app


def _register(app: ConveyorApp, spec: JobSpec) -> None:
    runtime = app.runtime
    default_queue = app.settings.default_queue

    def run(task: Task, *args: Any, **payload: Any) -> Any:
        """The task body: how it ends is what Flower shows (the table in worker.runtime).

        Every ending acknowledges the message except a dying process; only :class:`Postpone`
        makes Celery republish it. A :class:`DeadLettered` ends the task as a failure (it is
        in the task's ``throws``: an expected one, which Sentry's integration skips).
        """
        # Positional arguments are not part of the wire contract: the runtime dead-letters them.
        delivery = delivery_from_request(task.request, payload, default_queue, args=args)
        try:
            return runtime.attempt(spec, delivery)
        except Postpone as later:
            # The ledger is unreachable: republish the same message (same id and payload)
            # for a little later, then ack this one. No attempt was recorded or counted.
            raise task.retry(**retry_later(later.delay_s)) from None
        except RetryScheduled as scheduled:
            # Acked, shown as RETRY. Raised, not `task.retry()`: the retry is in the ledger
            # and the relay publishes it when due, so Celery must publish nothing.
            raise Retry(str(scheduled), exc=scheduled) from None
        except Redundant:
            # Acked without a task-succeeded event: a duplicate is not a second success.
            raise Ignore() from None

    # Celery compiles a signature from the function's name: it must be an identifier.
    run.__name__ = run.__qualname__ = "".join(c if c.isalnum() else "_" for c in spec.name)
    run.__doc__ = spec.fn.__doc__
    options = task_options(
        name=spec.name, queue=spec.queue, timeout_s=spec.timeout_s, throws=(DeadLettered,)
    )
    app.task(**options)(run)
