"""What reaches Sentry, seen by a stand-in for Sentry's ingest endpoint on loopback.

Real ``conveyor worker``, ``relay`` and ``api`` processes report to
``http://key@127.0.0.1:PORT/42``; the SDK posts its envelopes (gzip) to ``/api/42/envelope/``
on a thread of this process, which keeps them. Counts are taken after the processes were
stopped with SIGTERM, when the SDK has flushed everything it had queued, so "exactly one"
also means "and nothing more".
"""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery import Celery

from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import enqueue, get_job
from conveyor.worker.migrate import upgrade
from tests.conftest import (
    REDIS_URL,
    Processes,
    ProcessFactory,
    create_database,
    drop_database,
    terminal,
    wait_for,
)
from tests.integration.test_api_harness import api_env, assert_problem, create_key, start_api

pytestmark = pytest.mark.integration

PROJECT_ID = 42
FLUSH_TIMEOUT_S = 20.0


class FakeSentry:
    """Sentry's envelope endpoint, on a free loopback port; keeps every envelope it gets."""

    PATH = f"/api/{PROJECT_ID}/envelope/"

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.envelopes: list[bytes] = []
        self.lock = threading.Lock()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                received(self.path, gzip.decompress(body) if encoding == "gzip" else body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @classmethod
    def serving(cls) -> Iterator[FakeSentry]:
        """A fixture's body: start one, yield it, shut it down."""
        fake = cls()
        fake.thread.start()
        yield fake
        fake.server.shutdown()
        fake.server.server_close()

    @property
    def dsn(self) -> str:
        return f"http://key@127.0.0.1:{self.server.server_address[1]}/{PROJECT_ID}"

    def received(self, path: str, envelope: bytes) -> None:
        with self.lock:
            self.paths.add(path)
            self.envelopes.append(envelope)

    def raw(self) -> bytes:
        """Every envelope received, decompressed, as one byte string."""
        with self.lock:
            return b"\n".join(self.envelopes)

    def events(self) -> list[dict[str, Any]]:
        """The payloads of every ``event`` item received so far."""
        with self.lock:
            envelopes = list(self.envelopes)
        return [
            json.loads(payload)
            for envelope in envelopes
            for header, payload in envelope_items(envelope)
            if header.get("type") == "event"
        ]


def envelope_items(envelope: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
    """(item header, item payload) pairs: after the envelope's header line, each item is a
    header line and a payload of ``length`` bytes, or up to the next newline without one."""
    lines = envelope.split(b"\n", 1)
    rest = lines[1] if len(lines) > 1 else b""
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        header = json.loads(line)
        length = header.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:].removeprefix(b"\n")
        yield header, payload


@pytest.fixture
def sentry() -> Iterator[FakeSentry]:
    yield from FakeSentry.serving()


def events_by_job(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        found.setdefault(event.get("tags", {}).get("job_id", "-"), []).append(event)
    return found


def unavailable_for(job_id: str, log: Path) -> bool:
    """The worker's log says the ledger could not be reached for ``job_id``."""
    lines = log.read_text().splitlines() if log.exists() else []
    return any("ledger.unavailable" in line and job_id in line for line in lines)


def secret() -> str:
    return f"sk_live_{uuid.uuid4().hex}"


def test_each_dead_letter_is_one_event_without_its_payload(
    app: ConveyorApp,
    env: dict[str, str],
    broker_url: str,
    pg_url: str,
    queue: str,
    processes: Processes,
    start_relay: ProcessFactory,
    sentry: FakeSentry,
) -> None:
    env = {**env, "CONVEYOR_SENTRY_DSN": sentry.dsn, "CONVEYOR_ENV": "sentry-test"}
    # The ledger is "unreachable" for one job: its row is locked and the worker's sessions
    # give up on a lock after 0.5 s, so its claim fails and the message is postponed.
    postponed = enqueue("demo.work", {"n": 2}, queue=queue, app=app)
    worker_log = processes.tmp_path / f"worker-{len(processes.started)}.log"
    with psycopg.connect(pg_url) as lock:
        lock.execute("SELECT 1 FROM conveyor_jobs WHERE id = %s FOR UPDATE", (postponed,))
        # A node name of its own: another worker on this host and broker must not clash.
        worker_env = {**env, "PGOPTIONS": "-c lock_timeout=500"}
        processes.start(worker_env, "worker", "-Q", queue, "-c", "2", "-n", f"{queue}@%h")
        wait_for(lambda: unavailable_for(postponed, worker_log), timeout_s=30)
    # The ledger is back: the postponed message runs when it comes back (in 5 s).
    start_relay(env)
    gate, closed, token, loud, number = secret(), secret(), secret(), secret(), secret()

    flaky = enqueue("demo.work", {"n": 3, "fail_times": 1}, queue=queue, app=app)
    fatal = enqueue("test.gated", {"gate": gate, "fatal": True}, queue=queue, app=app)
    exhausted = enqueue("test.gated", {"gate": closed}, queue=queue, app=app)
    opted_in = enqueue("test.loud_fatal", {"value": loud}, queue=queue, app=app)
    foreign = Celery("foreign", broker=broker_url)
    foreign.conf.task_serializer = "json"
    poison = foreign.send_task("test.no_such_task", kwargs={"token": token}, queue=queue).id
    invalid = foreign.send_task("demo.work", kwargs={"n": number}, queue=queue).id
    foreign.close()

    for job_id in (postponed, flaky):
        assert wait_for(partial(terminal, app, job_id), timeout_s=60) == "succeeded"
    for job_id in (fatal, exhausted, opted_in, poison, invalid):
        assert wait_for(partial(terminal, app, job_id), timeout_s=60) == "dead"
    assert get_job(flaky, app=app).attempts == 2  # it failed once: a retry, not an error
    assert get_job(postponed, app=app).attempts == 1  # a postponement is not an attempt
    assert gate in (get_job(fatal, app=app).error_message or "")  # the message quotes it
    assert number in (get_job(invalid, app=app).error_message or "")  # pydantic quotes it
    reported = {fatal, exhausted, opted_in, poison, invalid}
    wait_for(lambda: reported <= set(events_by_job(sentry.events())), timeout_s=FLUSH_TIMEOUT_S)
    processes.stop_all()  # SIGTERM: the SDK flushes whatever it still holds

    assert sentry.paths == {FakeSentry.PATH}
    by_job = events_by_job(sentry.events())
    assert {job: len(events) for job, events in by_job.items()} == dict.fromkeys(reported, 1)
    # The dead jobs' Celery tasks failed with DeadLettered (Flower shows it): never reported.
    types = {v["type"] for e in sentry.events() for v in e.get("exception", {}).get("values", [])}
    assert "DeadLettered" not in types, types
    broker = "redis" if broker_url.startswith("redis") else "rabbitmq"
    expected = {
        fatal: ("test.gated", "fatal", "1", "Fatal", "gate [Filtered] is closed"),
        exhausted: ("test.gated", "exhausted", "2", "RuntimeError", "gate [Filtered] is closed"),
        opted_in: ("test.loud_fatal", "fatal", "1", "Fatal", f"refused {loud}"),
        poison: ("test.no_such_task", "unknown_task", "0", "KeyError", None),
        invalid: ("demo.work", "invalid_payload", "1", "PayloadInvalid", None),
    }
    for job_id, (task, reason, attempt, error, message) in expected.items():
        (event,) = by_job[job_id]
        assert event["level"] == "error"
        assert event["environment"] == "sentry-test"
        assert event["release"] == version("conveyor")
        tags = {
            "job_id": job_id,
            "task": task,
            "queue": queue,
            "attempt": attempt,
            "broker": broker,
            "reason": reason,
            "component": "worker",
        }
        assert event["tags"].items() >= tags.items()
        assert event["fingerprint"][:2] == [task, reason]
        (exception,) = event["exception"]["values"]
        assert exception["type"] == error
        if message is not None:
            assert exception["value"] == message
    (gated,) = by_job[fatal]
    frames = gated["exception"]["values"][0]["stacktrace"]["frames"]
    assert frames[-1]["function"] == "gated"
    assert "breadcrumbs" not in gated  # the job's queries and log lines may quote it
    (loud_event,) = by_job[opted_in]
    assert loud_event["extra"]["payload"] == {"value": loud}

    raw = sentry.raw()
    (schema,) = by_job[invalid]
    assert "input_value=[Filtered], input_type=str" in schema["exception"]["values"][0]["value"]
    for value in (gate, closed, token, number):
        assert value.encode() not in raw
    assert loud.encode() in raw  # the one job that allows it


@pytest.fixture
def ledger_url() -> Iterator[str]:
    url = create_database("conveyor_sentry_api")
    upgrade(url.replace("postgresql://", "postgresql+psycopg://"))
    yield url
    drop_database(url)


def test_api_reports_an_unexpected_500_once_and_no_4xx(
    ledger_url: str, tmp_path: Path, processes: Processes, sentry: FakeSentry
) -> None:
    env = api_env(ledger_url, REDIS_URL, tmp_path, sentry_dsn=sentry.dsn, env="sentry-test")
    admin = create_key(env, "admin")
    api = start_api(processes, env)
    client = api.client(admin)
    assert_problem(client.get(f"/v1/jobs/{uuid.uuid4()}"), 404)
    assert_problem(api.client().get("/v1/jobs"), 401)
    unknown = {"task": "no.such", "payload": {}}
    assert_problem(client.post("/v1/jobs", json=unknown), 422, "unknown-task")

    # The ledger breaks in a way the API cannot explain (as in test_api_outages.py).
    with psycopg.connect(ledger_url) as connection:
        connection.execute("DROP TABLE conveyor_audit")
    assert_problem(client.post("/v1/dead-letters/purge", json={"all": True}), 500)
    wait_for(lambda: sentry.events(), timeout_s=FLUSH_TIMEOUT_S)
    api.close()
    processes.stop_all()  # SIGTERM: the SDK flushes whatever it still holds

    assert sentry.paths == {FakeSentry.PATH}
    (event,) = sentry.events()
    assert event["level"] == "error"
    assert event["environment"] == "sentry-test"
    assert event["tags"]["component"] == "api"
    (exception,) = [
        value for value in event["exception"]["values"] if value["type"] == "ProgrammingError"
    ]
    assert exception["value"] == "[Filtered]"  # a database error's message quotes parameters
    assert event["request"]["method"] == "POST"
    assert event["request"]["url"].endswith("/v1/dead-letters/purge")
    assert "data" not in event["request"]
    raw = sentry.raw()
    assert admin.encode() not in raw  # the Authorization header is not sent
    assert b"conveyor_audit" not in raw  # nor the SQL in the message or in breadcrumbs
