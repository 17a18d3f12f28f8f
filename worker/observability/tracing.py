"""Tracing: one OpenTelemetry trace per job, from the producer's enqueue to every run.

Off unless ``CONVEYOR_OTLP_ENDPOINT`` is set. Off, nothing here loads the OpenTelemetry
SDK or starts a thread: the helpers below return at their first line. On, each process
exports its spans over OTLP/HTTP (``{endpoint}/v1/traces``) and a job's trace reads

1. ``conveyor.enqueue <task>`` (producer span in the client, API or ``conveyor enqueue``;
   ``conveyor.enqueue_many`` for a batch, whose jobs share its trace),
2. ``apply_async/<task>`` (opentelemetry-instrumentation-celery, around the publish; it
   writes the W3C ``traceparent`` into the message's headers),
3. ``run/<task>`` (the same instrumentation on the worker, parented by that header).

A job the relay publishes later (a delay, a retry, an outbox row, a recovered lease) has
no producer waiting for it, so the enqueue's ``traceparent``/``tracestate`` are kept in its
ledger row and the relay publishes it inside ``conveyor.relay.publish <task>``, a child of
that enqueue: retries hours later still land in the trace that started the job.

Under Celery's prefork pool the SDK is set up in each pool process after the fork
(``worker_process_init``), as the instrumentation's documentation asks: the batch
exporter's thread and HTTP connections must not be shared across a fork. Pool processes
leave with ``os._exit``, which skips ``atexit``, so ``worker_process_shutdown`` flushes
them; every other process flushes at exit (the SDK's own ``atexit`` hook).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from conveyor.config import Settings
    from conveyor.worker.models import Job
    from conveyor.worker.outcomes import JobEvent

log = logging.getLogger("conveyor.tracing")

P = ParamSpec("P")

SERVICES = {"worker": "conveyor-worker", "relay": "conveyor-relay", "api": "conveyor-api"}
"""Service name by ``conveyor`` command; any other process is :data:`CLIENT_SERVICE`."""
CLIENT_SERVICE = "conveyor-client"
TRACES_PATH = "/v1/traces"
FLUSH_TIMEOUT_MS = 5_000
"""How long :func:`flush_tracing` asks the SDK to wait (SDK 1.45 ignores it: it just exports)."""

JOB_ID = "conveyor.job.id"
JOB_TASK = "conveyor.job.task"
JOB_QUEUE = "conveyor.job.queue"
JOB_ATTEMPTS = "conveyor.job.attempts"
BATCH_SIZE = "conveyor.batch.size"

W3C = TraceContextTextMapPropagator()

_lock = threading.Lock()
_configured = False
"""init_tracing ran with an endpoint in this process (it never runs twice)."""
_provider: TracerProvider | None = None
_tracer: Tracer | None = None
"""Set once the SDK is installed in this process; None means tracing is off here."""


def init_tracing(settings: Settings, service_name: str | None = None) -> bool:
    """Set up tracing for this process if ``settings.otlp_endpoint`` is set; True if it did.

    Called by :func:`worker.app.create_app`, so every process that builds the app (worker,
    relay, API, CLI, a Python producer) is covered; later calls do nothing. The service name
    defaults to the ``conveyor`` command being run (``conveyor-worker``, ``conveyor-relay``,
    ``conveyor-api``), else ``conveyor-client``. In a worker the SDK is only installed once
    Celery says where tasks run: in each prefork pool process, or in the main process for
    the ``solo`` and ``threads`` pools. Never raises for an unreachable collector: exports
    fail in the background and are logged by the SDK.
    """
    global _configured
    if settings.otlp_endpoint is None:
        return False
    with _lock:
        if _configured:
            return False
        _configured = True
    command = _command()
    name = service_name or SERVICES.get(command or "", CLIENT_SERVICE)

    def install() -> None:
        _install(settings, name)

    if command == "worker":
        _install_in_pool(install)
    else:
        install()
    return True


def shutdown_tracing() -> None:
    """Export the spans still buffered, then stop recording and exporting in this process.

    Runs in each prefork pool process as it exits (``worker_process_shutdown``); other
    processes get the same from the SDK at exit. With the collector down, it gives up once
    the exporter's retries run out (``OTEL_EXPORTER_OTLP_TRACES_TIMEOUT``, 10 s by default).
    Afterwards this process records no spans, and the SDK cannot be set up again in it.
    """
    global _provider, _tracer
    with _lock:
        provider, _provider, _tracer = _provider, None, None
    if provider is None:
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
    provider.shutdown()  # the batch processor exports what is left before it stops


def flush_tracing() -> bool:
    """Export the buffered spans now; False if tracing is off here or the flush timed out.

    For short-lived producers that want their spans out before they go on (exit flushes
    anyway); the exporter otherwise sends every few seconds.
    """
    provider = _provider
    return provider is not None and provider.force_flush(FLUSH_TIMEOUT_MS)


def observe(event: JobEvent) -> None:
    """Mark the current span failed for a failed attempt (the outcome chain's tracing
    observer): its error type, never its message, which may quote the payload. Outside a
    span (tracing off, or a poison message) this does nothing."""
    if event.failure is None:
        return
    span = trace.get_current_span()
    span.set_status(Status(StatusCode.ERROR, event.failure.error_type))
    span.set_attribute("conveyor.error_type", event.failure.error_type)


def current_trace_id() -> str | None:
    """The active span's trace id as 32 hex digits, or None outside any span (for logs)."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def traced_enqueue(
    *, default_app: Callable[[], object]
) -> Callable[[Callable[P, str]], Callable[P, str]]:
    """Wrap :func:`worker.client.enqueue` in a ``conveyor.enqueue <task>`` producer span.

    The span is the parent of the publish (and so of the run); it records the job id the
    call returned, or the exception it raised. Tracing off, the call goes straight through.
    A call that names no ``app`` builds ``default_app`` first: building the app is what
    sets tracing up in a plain Python producer, and its first job is traced too.
    """

    def decorate(enqueue: Callable[P, str]) -> Callable[P, str]:
        @wraps(enqueue)
        def traced(*args: P.args, **kwargs: P.kwargs) -> str:
            if _tracer is None and kwargs.get("app") is None:
                default_app()
            tracer = _tracer
            if tracer is None:
                return enqueue(*args, **kwargs)
            task = str(args[0] if args else kwargs.get("task_name"))
            with tracer.start_as_current_span(
                f"conveyor.enqueue {task}", kind=SpanKind.PRODUCER, attributes={JOB_TASK: task}
            ) as span:
                job_id = enqueue(*args, **kwargs)
                span.set_attribute(JOB_ID, job_id)
                return job_id

        return traced

    return decorate


@contextmanager
def traced_batch(size: int) -> Iterator[None]:
    """A ``conveyor.enqueue_many`` producer span around a batch (:func:`~worker.client.
    enqueue_many`): every job of the batch is in its trace. Off, this does nothing."""
    tracer = _tracer
    if tracer is None:
        yield
        return
    with tracer.start_as_current_span(
        "conveyor.enqueue_many", kind=SpanKind.PRODUCER, attributes={BATCH_SIZE: size}
    ):
        yield


def job_trace_context(*, queue: str) -> tuple[str | None, str | None]:
    """``(traceparent, tracestate)`` to keep in a new job's row; ``(None, None)`` when off.

    Called inside :func:`traced_enqueue`'s span, which it also labels with the job's
    queue: the relay later publishes the job as a child of that span.
    """
    if _tracer is None:
        return None, None
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None, None
    span.set_attribute(JOB_QUEUE, queue)
    carrier: dict[str, str] = {}
    W3C.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate")


@contextmanager
def relay_span(job: Job) -> Iterator[None]:
    """Publish ``job`` from the relay inside the trace its enqueue started.

    The parent comes from the row alone (a fresh context, not the relay thread's own), so
    every row's publish lands in its own trace; a row without one (tracing was off at
    enqueue) starts a new trace. Off, this does nothing.
    """
    tracer = _tracer
    if tracer is None:
        yield
        return
    carrier = {"traceparent": job.traceparent or "", "tracestate": job.tracestate or ""}
    parent = W3C.extract(carrier, context=Context())
    attributes: dict[str, Any] = {
        JOB_ID: job.id,
        JOB_TASK: job.task,
        JOB_QUEUE: job.queue,
        JOB_ATTEMPTS: job.attempts,
    }
    with tracer.start_as_current_span(
        f"conveyor.relay.publish {job.task}", context=parent, attributes=attributes
    ):
        yield


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for ``endpoint`` (``http://host:4318`` → ``…/v1/traces``)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


def _command() -> str | None:
    """The command this process runs: ``conveyor worker`` and ``celery … worker`` → ``worker``.

    Read from click while the app is built inside a command; None for a plain Python
    producer. Celery's own CLI loads the app in its group, before the subcommand runs.
    """
    import click

    context = click.get_current_context(silent=True)
    if context is None:
        return None
    return context.invoked_subcommand or context.info_name


def _install_in_pool(install: Callable[[], None]) -> None:
    """Install where a worker runs tasks: in each prefork child, else in the main process."""
    from celery import signals

    def in_pool_process(**_: Any) -> None:
        install()

    def in_main_process(sender: Any, **_: Any) -> None:
        if not _is_prefork(sender):
            install()

    def leaving_pool_process(**_: Any) -> None:
        shutdown_tracing()

    signals.worker_process_init.connect(in_pool_process, weak=False)
    signals.worker_init.connect(in_main_process, weak=False)
    signals.worker_process_shutdown.connect(leaving_pool_process, weak=False)


def _is_prefork(worker: Any) -> bool:
    """True if the worker about to start (``worker_init``'s sender) uses the prefork pool."""
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool

    pool = get_implementation(worker.pool_cls)
    return isinstance(pool, type) and issubclass(pool, TaskPool)


def _install(settings: Settings, service_name: str) -> None:
    """The SDK for this process: resource, batch OTLP/HTTP exporter, Celery instrumentation."""
    global _provider, _tracer
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    assert settings.otlp_endpoint is not None
    release = settings.release_name
    resource = Resource.create(
        {
            "service.name": service_name,
            "service.version": release,
            "deployment.environment": settings.env,
            "deployment.environment.name": settings.env,
            "process.pid": os.getpid(),  # which pool process ran a job
        }
    )
    provider = TracerProvider(resource=resource)
    url = traces_url(settings.otlp_endpoint)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    # Refused (with a warning from the API) if the host application set its own provider
    # first: Conveyor's spans still go to Conveyor's endpoint through `provider` below.
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    with _lock:
        _provider, _tracer = provider, provider.get_tracer("conveyor", release)
    log.info("tracing.started", extra={"service": service_name, "endpoint": url})
