"""Tracing through real processes: one trace from the producer's enqueue to the worker's run.

A local OTLP/HTTP receiver (stdlib ``http.server``) decodes what every process exports;
the worker, relay and API are real ``conveyor`` processes with ``CONVEYOR_OTLP_ENDPOINT``
pointing at it, and this process is the Python producer (tracing set up in-process).
"""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from conveyor.config import load_settings
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.client import enqueue, get_job
from conveyor.worker.observability.tracing import flush_tracing, shutdown_tracing
from tests.conftest import (
    REDIS_URL,
    ROOT,
    TEST_JOBS,
    Processes,
    ProcessFactory,
    conveyor_env,
    terminal,
    wait_for,
)
from tests.integration.test_api_harness import start_api

pytestmark = pytest.mark.integration

SPAN_TIMEOUT_S = 20.0
QUICK_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}
"""Pool processes export every 0.1 s instead of every 5 s."""
EXPORT_ONLY_AT_EXIT = {"OTEL_BSP_SCHEDULE_DELAY": "600000"}
"""Spans leave the process only when it flushes on the way out."""


@dataclass(frozen=True)
class Received:
    """One span as the receiver decoded it, with its process's service name."""

    service: str
    resource: dict[str, Any]
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    status: int = 0
    """``Status.StatusCode``: 0 unset, 1 ok, 2 error."""


def _value(value: AnyValue) -> Any:
    field = value.WhichOneof("value")
    return getattr(value, field) if field else None


def _attributes(pairs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class Collector:
    """An OTLP/HTTP trace receiver on loopback, keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if (
                    self.path != "/v1/traces"
                    or self.headers.get("Content-Type") != "application/x-protobuf"
                ):
                    self.send_response(404)
                    self.end_headers()
                    return
                collector.add(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                found += [
                    Received(
                        service=resource.get("service.name", ""),
                        resource=resource,
                        name=span.name,
                        kind=span.kind,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        attributes=_attributes(span.attributes),
                        status=span.status.code,
                    )
                    for span in scope_spans.spans
                ]
        with self._lock:
            self.spans += found

    def named(self, name: str, **attributes: Any) -> list[Received]:
        """Spans called ``name`` whose attributes include ``attributes``."""
        with self._lock:
            return [
                span
                for span in self.spans
                if span.name == name
                and all(span.attributes.get(key) == value for key, value in attributes.items())
            ]

    def ancestors(self, span: Received) -> list[Received]:
        """``span``'s parent, its parent, ... as far as the received spans go."""
        with self._lock:
            by_id = {each.span_id: each for each in self.spans}
        chain = []
        while span.parent_id in by_id:
            span = by_id[span.parent_id]
            chain.append(span)
        return chain

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def collector() -> Iterator[Collector]:
    """One receiver per test process, for as long as the process: tracing is set up once
    per process and cannot be set up again after :func:`shutdown_tracing`, and a test
    process may run this module's tests with other modules' in between (``worksteal``),
    which would tear a module-scoped receiver down and start another on a new port."""
    receiver = Collector()
    yield receiver
    shutdown_tracing()  # this process stops exporting before the receiver goes away
    receiver.close()


@pytest.fixture
def traced_env(
    broker_url: str, own_ledger_url: str, tmp_path: Path, collector: Collector
) -> dict[str, str]:
    """On the module's own ledger: a relay of another module's (untraced) must not be the
    one that publishes these tests' retries (one relay acts per ledger, worker/leader.py)."""
    env = conveyor_env(broker_url, own_ledger_url, tmp_path)
    return {**env, "CONVEYOR_OTLP_ENDPOINT": collector.url, **QUICK_EXPORT}


@pytest.fixture
def traced_app(
    broker_url: str, own_ledger_url: str, tmp_path: Path, collector: Collector
) -> Iterator[ConveyorApp]:
    """The producer side, with tracing set up in this process (once per test process)."""
    settings = load_settings(
        broker_url=broker_url,
        database_url=own_ledger_url,
        data_dir=tmp_path / "var",
        task_modules=[TEST_JOBS],
        otlp_endpoint=collector.url,
        env="tracing-test",
        release="9.9.9-test",
    )
    built = create_app(settings)
    assert flush_tracing(), "tracing was not set up in the test process"
    yield built
    built.ledger.dispose()
    built.close()


def start_worker(processes: Processes, env: dict[str, str], queue: str) -> subprocess.Popen[bytes]:
    """A real prefork `conveyor worker` (2 pool processes) with a node name of its own.

    Like conftest's ``start_worker``, but never ``celery@<host>``: a test run elsewhere on
    the same RabbitMQ holds that node's exclusive pidbox queue and the worker would exit.
    """
    node = f"trace-{uuid.uuid4().hex[:8]}@%h"
    args = ["worker", "-Q", queue, "-c", "2", "--pool", "prefork", "-n", node]
    return processes.start(env, *args, "--loglevel", "INFO")


def one(spans: list[Received]) -> Received:
    assert len(spans) == 1, spans
    return spans[0]


def arrived(collector: Collector, name: str, count: int, **attributes: Any) -> list[Received]:
    """Wait until ``count`` spans called ``name`` (with ``attributes``) arrived; return them."""
    found: list[Received] = wait_for(
        lambda: len(spans := collector.named(name, **attributes)) >= count and spans,
        timeout_s=SPAN_TIMEOUT_S,
    )
    return found


def runs_of(collector: Collector, job_id: str, count: int = 1) -> list[Received]:
    """The worker's ``run`` spans of ``job_id``, once ``count`` of them arrived."""
    return arrived(collector, "run/demo.work", count, **{"messaging.message.id": job_id})


def test_one_trace_holds_the_enqueue_the_publish_and_the_run(
    traced_app: ConveyorApp,
    traced_env: dict[str, str],
    queue: str,
    processes: Processes,
    collector: Collector,
) -> None:
    # The pool processes only export when they flush on the way out: stopping the worker
    # must not lose the run's span.
    worker = start_worker(processes, {**traced_env, **EXPORT_ONLY_AT_EXIT}, queue)
    job_id = enqueue("demo.work", {"n": 3}, queue=queue, app=traced_app)
    assert wait_for(lambda: terminal(traced_app, job_id)) == "succeeded"
    assert flush_tracing()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0

    run = one(runs_of(collector, job_id))
    enqueued = one(collector.named("conveyor.enqueue demo.work", **{"conveyor.job.id": job_id}))
    assert enqueued.service == "conveyor-client"
    assert enqueued.kind == Span.SPAN_KIND_PRODUCER
    assert enqueued.attributes["conveyor.job.task"] == "demo.work"
    assert enqueued.attributes["conveyor.job.queue"] == queue
    assert enqueued.resource["deployment.environment"] == "tracing-test"
    assert enqueued.resource["service.version"] == "9.9.9-test"

    assert run.service == "conveyor-worker"
    assert run.resource["process.pid"] != worker.pid  # set up in the pool process, not before
    assert run.kind == Span.SPAN_KIND_CONSUMER
    assert run.trace_id == enqueued.trace_id
    chain = collector.ancestors(run)
    assert [(span.name, span.service) for span in chain] == [
        ("apply_async/demo.work", "conveyor-client"),
        ("conveyor.enqueue demo.work", "conveyor-client"),
    ]
    assert chain[-1] == enqueued
    # The enqueue's context is kept with the job, for the relay.
    row = get_job(job_id, app=traced_app)
    assert row.traceparent is not None
    assert row.traceparent.startswith(f"00-{enqueued.trace_id}-{enqueued.span_id}-")


def test_jobs_the_relay_publishes_later_stay_in_the_enqueuing_trace(
    traced_app: ConveyorApp,
    traced_env: dict[str, str],
    queue: str,
    processes: Processes,
    start_relay: ProcessFactory,
    collector: Collector,
) -> None:
    """A delayed job whose first attempt fails: both publishes come from the relay."""
    start_worker(processes, traced_env, queue)
    start_relay(traced_env)
    job_id = enqueue("demo.work", {"n": 2, "fail_times": 1}, queue=queue, delay=0.3, app=traced_app)
    assert wait_for(lambda: terminal(traced_app, job_id)) == "succeeded"
    assert get_job(job_id, app=traced_app).attempts == 2
    assert flush_tracing()

    runs = runs_of(collector, job_id, 2)
    relayed = arrived(
        collector, "conveyor.relay.publish demo.work", 2, **{"conveyor.job.id": job_id}
    )
    enqueued = one(collector.named("conveyor.enqueue demo.work", **{"conveyor.job.id": job_id}))
    assert len(runs) == len(relayed) == 2
    for run in runs:
        assert run.trace_id == enqueued.trace_id
        chain = collector.ancestors(run)
        assert [(span.name, span.service) for span in chain] == [
            ("apply_async/demo.work", "conveyor-relay"),
            ("conveyor.relay.publish demo.work", "conveyor-relay"),
            ("conveyor.enqueue demo.work", "conveyor-client"),
        ]
        assert chain[-1] == enqueued
    assert sorted(span.attributes["conveyor.job.attempts"] for span in relayed) == [0, 1]
    # The failed first attempt's run span is an error, by type only; the second is not.
    failed = [run for run in runs if run.status == 2]
    assert len(failed) == 1
    assert failed[0].attributes["conveyor.error_type"].endswith("Error")


def test_a_foreign_producers_job_keeps_its_first_runs_trace_for_its_retries(
    traced_app: ConveyorApp,
    traced_env: dict[str, str],
    queue: str,
    broker_url: str,
    processes: Processes,
    start_relay: ProcessFactory,
    collector: Collector,
) -> None:
    """Sent by plain Celery (no Conveyor, no tracing): its row is made by the first run."""
    start_worker(processes, traced_env, queue)
    start_relay(traced_env)
    foreign = Celery("foreign", broker=broker_url)
    job_id = foreign.send_task("demo.work", kwargs={"n": 3, "fail_times": 1}, queue=queue).id
    foreign.close()
    assert wait_for(lambda: terminal(traced_app, job_id)) == "succeeded"

    first, second = sorted(runs_of(collector, job_id, 2), key=lambda run: run.status != 2)
    assert first.status == 2  # the failed attempt
    assert second.trace_id == first.trace_id
    relayed = one(collector.ancestors(second)[1:2])
    assert relayed.name == "conveyor.relay.publish demo.work"
    assert relayed.parent_id == first.span_id


CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize("broker_url", [REDIS_URL], ids=["redis"])  # the broker is not the point
def test_an_api_enqueue_continues_the_callers_trace_to_the_worker(
    traced_env: dict[str, str],
    traced_app: ConveyorApp,
    queue: str,
    processes: Processes,
    collector: Collector,
) -> None:
    start_worker(processes, traced_env, queue)
    api = start_api(processes, traced_env)
    client = api.client(api.key("enqueue"))
    created = client.post(
        "/v1/jobs",
        json={"task": "demo.work", "payload": {"n": 4}, "queue": queue},
        headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert wait_for(lambda: terminal(traced_app, job_id)) == "succeeded"
    api.close()

    run = one(runs_of(collector, job_id))
    by_id = {"conveyor.job.id": job_id}
    enqueued = one(arrived(collector, "conveyor.enqueue demo.work", 1, **by_id))
    assert enqueued.service == "conveyor-api"
    assert run.trace_id == enqueued.trace_id == CALLER_TRACE
    chain = collector.ancestors(run)
    assert [(span.name, span.service) for span in chain[:2]] == [
        ("apply_async/demo.work", "conveyor-api"),
        ("conveyor.enqueue demo.work", "conveyor-api"),
    ]
    # Above the enqueue: the API's request span, a child of the caller's span.
    assert chain[-1].kind == Span.SPAN_KIND_SERVER
    assert chain[-1].parent_id == CALLER_SPAN


TRACING_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.instrumentation.celery",
)
"""What setting tracing up imports (redis-py's own imports load the metrics SDK anyway)."""

NO_TRACING_PROBE = """
import json, sys, threading
TRACING_MODULES = json.loads(sys.argv[2])
from opentelemetry import trace
from conveyor.config import load_settings
from conveyor.worker.app import create_app
from conveyor.worker.client import enqueue

app = create_app(load_settings())
job_id = enqueue("demo.work", {"n": 1}, queue=sys.argv[1], app=app)
print(json.dumps({
    "loaded": sorted(name for name in TRACING_MODULES if name in sys.modules),
    "provider": type(trace.get_tracer_provider()).__name__,
    "threads": [thread.name for thread in threading.enumerate()],
    "traceparent": app.ledger.get(job_id).traceparent,
}))
"""


def probe(env: dict[str, str], queue: str) -> dict[str, Any]:
    """Build the app and enqueue one job in a fresh process; report what tracing did there."""
    done = subprocess.run(
        [sys.executable, "-c", NO_TRACING_PROBE, queue, json.dumps(TRACING_MODULES)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.mark.parametrize("broker_url", [REDIS_URL], ids=["redis"])
def test_tracing_is_off_without_an_endpoint(
    env: dict[str, str], queue: str, collector: Collector
) -> None:
    off = probe(env, queue)
    assert off["loaded"] == []
    assert off["provider"] == "ProxyTracerProvider"
    assert "OtelBatchSpanRecordProcessor" not in off["threads"]
    assert off["traceparent"] is None
    # The same probe with an endpoint, so the checks above are known to notice tracing.
    on = probe({**env, "CONVEYOR_OTLP_ENDPOINT": collector.url}, queue)
    assert on["loaded"] == sorted(TRACING_MODULES)
    assert on["provider"] == "TracerProvider"
    assert "OtelBatchSpanRecordProcessor" in on["threads"]
    assert on["traceparent"] is not None


def test_current_trace_id_is_the_active_span_s() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from conveyor.worker.observability.tracing import current_trace_id

    assert current_trace_id() is None
    with TracerProvider().get_tracer("test").start_as_current_span("outer") as span:
        assert current_trace_id() == format(span.get_span_context().trace_id, "032x")
    assert current_trace_id() is None
