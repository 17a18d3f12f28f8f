"""``conveyor.testing``: a pytest plugin for testing your own jobs against a real worker.

Installed with Conveyor (entry point ``pytest11``: ``conveyor``), it adds one fixture,
``conveyor``, that runs a real Celery worker in a thread of the test process (Celery's own
:func:`celery.contrib.testing.worker.start_worker`, with Conveyor's app, consumer and
bootsteps) against the embedded SQLite broker and ledger in the test's ``tmp_path``, or
against a real broker and ledger (``CONVEYOR_TEST_BROKER_URL`` /
``CONVEYOR_TEST_DATABASE_URL``, or the ini options ``conveyor_broker_url`` /
``conveyor_database_url``). See docs/testing.md, "Testing your own jobs".

Loading the plugin costs nothing: Celery, SQLAlchemy and Conveyor's runtime are imported
inside the fixture, so a test that does not ask for ``conveyor`` runs as it did without it.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conveyor.config import Settings
    from conveyor.worker.app import ConveyorApp
    from conveyor.worker.models import Job
    from conveyor.worker.relay import Relay

BROKER_ENV = "CONVEYOR_TEST_BROKER_URL"
DATABASE_ENV = "CONVEYOR_TEST_DATABASE_URL"
POLL_S = 0.02
"""How often :meth:`ConveyorHarness.drain` looks at the ledger."""
UNFINISHED = ("queued", "running", "scheduled")
TERMINAL = ("succeeded", "dead", "cancelled")


class DrainTimeout(AssertionError):
    """:meth:`ConveyorHarness.drain` ran out of time with jobs still unfinished."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "conveyor_task_modules",
        "conveyor fixture: job modules to import, comma-separated (else CONVEYOR_TASK_MODULES)",
        default="",
    )
    parser.addini(
        "conveyor_broker_url",
        f"conveyor fixture: a real broker ({BROKER_ENV} wins); unset: embedded SQLite",
        default="",
    )
    parser.addini(
        "conveyor_database_url",
        f"conveyor fixture: a real, migrated ledger ({DATABASE_ENV} wins); unset: SQLite",
        default="",
    )


class ConveyorHarness:
    """What the ``conveyor`` fixture yields: a worker, a relay you drive, and the ledger.

    "This harness's jobs" are every job of the ledger when it is the test's own (embedded),
    else the jobs enqueued through :meth:`enqueue` (a shared ledger holds other tests' jobs).
    """

    def __init__(self, app: ConveyorApp, relay: Relay, *, own_ledger: bool) -> None:
        self.app = app
        self.relay = relay
        self.own_ledger = own_ledger
        self.advanced_s = 0.0
        """Seconds of time made to pass so far (:meth:`advance`, and drains)."""
        self._ids: list[str] = []

    @property
    def settings(self) -> Settings:
        return self.app.settings

    def enqueue(self, task: str, payload: dict[str, Any], **kwargs: Any) -> str:
        """:func:`conveyor.worker.client.enqueue` on this app; returns the job's id."""
        from conveyor.worker.client import enqueue

        job_id = enqueue(task, payload, app=self.app, **kwargs)
        self._ids.append(job_id)
        return job_id

    def jobs(self, state: str | None = None, task: str | None = None) -> list[Job]:
        """This harness's ledger rows, oldest first, filtered by state and task."""
        from sqlalchemy import select

        from conveyor.worker.models import Job

        query = select(Job).order_by(Job.created_at, Job.id)
        if not self.own_ledger:
            query = query.where(Job.id.in_(self._ids))
        if state is not None:
            query = query.where(Job.state == state)
        if task is not None:
            query = query.where(Job.task == task)
        with self.app.ledger.session() as session:
            return list(session.scalars(query))

    def job(self, job_id: str) -> Job:
        """One job's ledger row (raises ``JobNotFound``)."""
        return self.app.ledger.require(job_id)

    def advance(self, seconds: float) -> int:
        """Make ``seconds`` pass for this harness's scheduled jobs; returns how many moved.

        Moves ``run_at`` of every ``scheduled`` job (a delayed enqueue, a retry waiting for
        its backoff or its ``RetryAfter``) ``seconds`` earlier in the ledger, then runs one
        relay pass, which publishes those now due. Nothing else moves: not the wall clock,
        not a job's own ``time.sleep``, deadlines (``expires_at``), leases, timestamps such
        as ``created_at``, or the idempotency window.
        """
        if seconds < 0:
            raise ValueError("time only passes forwards: seconds must be >= 0")
        moved = 0
        with self.app.ledger.transaction() as session:
            for row in self._scheduled(session):
                if row.run_at is not None:
                    row.run_at = row.run_at - timedelta(seconds=seconds)
                    moved += 1
        self.advanced_s += seconds
        self.relay.run_once()
        return moved

    def drain(self, timeout_s: float = 30) -> list[dict[str, Any]]:
        """Run until none of this harness's jobs is queued, running or scheduled.

        Each round runs a relay pass (due retries and delayed jobs are published); when
        every unfinished job is ``scheduled``, time is advanced to the earliest ``run_at``
        (:meth:`advance`), so retries and delays happen at once, in their order. Returns the
        jobs in a terminal state, oldest first, as ``conveyor jobs show --json`` shows them
        (:func:`conveyor.worker.operations.views.job_view`). Raises :class:`DrainTimeout`,
        listing the unfinished jobs, after ``timeout_s`` of wall time.
        """
        from conveyor.worker.models import utcnow
        from conveyor.worker.operations.views import job_view

        deadline = time.monotonic() + timeout_s
        while True:
            self.relay.run_once()
            unfinished = [job for job in self.jobs() if job.state in UNFINISHED]
            if not unfinished:
                return [job_view(job) for job in self.jobs() if job.state in TERMINAL]
            if time.monotonic() > deadline:
                raise DrainTimeout(
                    f"drain: {len(unfinished)} job(s) unfinished after {timeout_s:g}s:\n"
                    + "\n".join(describe(job) for job in unfinished)
                )
            waiting = [job.run_at for job in unfinished if job.state == "scheduled"]
            if len(waiting) == len(unfinished) and all(waiting):
                earliest: datetime = min(run_at for run_at in waiting if run_at is not None)
                self.advance(max((earliest - utcnow()).total_seconds(), 0.0))
                continue
            time.sleep(POLL_S)

    def assert_enqueued(self, task: str, payload_subset: dict[str, Any] | None = None) -> Job:
        """The first job of ``task`` whose payload holds every item of ``payload_subset``;
        an ``AssertionError`` listing every job enqueued when there is none."""
        subset = payload_subset or {}
        jobs = self.jobs()
        for job in jobs:
            if job.task == task and all(
                key in job.payload and job.payload[key] == value for key, value in subset.items()
            ):
                return job
        wanted = f"{task!r}" + (f" with payload containing {subset!r}" if subset else "")
        listed = "\n".join(describe(job) for job in jobs) or "  (nothing)"
        raise AssertionError(f"no job {wanted} was enqueued; enqueued:\n{listed}")

    def _scheduled(self, session: Any) -> list[Job]:
        from sqlalchemy import select

        from conveyor.worker.models import Job

        query = select(Job).where(Job.state == "scheduled")
        if not self.own_ledger:
            query = query.where(Job.id.in_(self._ids))
        return list(session.scalars(query.with_for_update()))


def describe(job: Job) -> str:
    """One line per job for failure messages."""
    line = f"  {job.id} {job.task} {job.state} attempts={job.attempts}/{job.max_attempts}"
    line += f" payload={job.payload!r}"
    if job.run_at is not None:
        line += f" run_at={job.run_at:%H:%M:%S}Z"
    if job.error_type is not None:
        line += f" error={job.error_type}: {job.error_message}"
    return line


def _option(config: pytest.Config, env: str, ini: str) -> str | None:
    value = os.environ.get(env) or str(config.getini(ini) or "")
    return value.strip() or None


def harness_settings(config: pytest.Config, data_dir: Path) -> Settings:
    """The fixture's settings: the environment's, with the test's broker, ledger and task
    modules, one worker process, and no relay in the worker (the harness drives it)."""
    from conveyor.config import load_settings

    overrides: dict[str, Any] = {
        "data_dir": data_dir,
        "broker_url": _option(config, BROKER_ENV, "conveyor_broker_url"),
        "database_url": _option(config, DATABASE_ENV, "conveyor_database_url"),
        "relay_in_workers": False,
        "worker_concurrency": 1,
    }
    modules = str(config.getini("conveyor_task_modules") or "").strip()
    if modules:
        overrides["task_modules"] = modules
    return load_settings(**overrides)


def stop_promptly(worker: Any) -> None:
    """Let the test worker's thread exit within milliseconds instead of 2-4 s.

    On a polling transport (the embedded SQLite broker) Celery's loop waits for messages
    in 2 s rounds, and on stopping runs one round more. Closing the consumer's blueprint
    ends the loop after this round, and making the channels' next poll time out ends the
    round at once. Jobs in flight are not interrupted: a round that is handing a message to
    the job runs it to its end first. Other transports stop promptly anyway.
    """
    from celery import bootsteps

    def timed_out(*_args: Any, **_kwargs: Any) -> Any:
        raise TimeoutError()  # socket.timeout: the loop's 2 s round ends

    consumer = getattr(worker, "consumer", None)
    if consumer is None or consumer.connection is None:
        return
    consumer.blueprint.state = bootsteps.CLOSE
    transport = consumer.connection.transport
    if getattr(transport, "driver_type", "") != "sql":  # kombu's SQLAlchemy transport
        return
    for channel in list(getattr(transport, "channels", ())):
        channel._get = timed_out


@pytest.fixture
def conveyor(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConveyorHarness]:
    """A real Conveyor worker (Celery's test worker, solo pool, in a thread) for this test."""
    from celery import _state as celery_state
    from celery.contrib.testing.worker import start_worker

    from conveyor.worker.app import create_app
    from conveyor.worker.jobs import REGISTRY
    from conveyor.worker.relay import Relay
    from conveyor.worker.schema import ensure_schema

    settings = harness_settings(request.config, tmp_path / "conveyor")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ensure_schema(settings)  # migrates the embedded ledger; a real one must be migrated
    app = create_app(settings)
    queues = sorted({spec.queue or settings.default_queue for spec in REGISTRY.values()})
    relay = Relay(app)
    # Celery's default, gen<pid>@host, is the same for every test of a session: on RabbitMQ
    # the next worker's exclusive control queue would clash with the last one's.
    node = f"conveyor-test-{uuid.uuid4().hex[:12]}@{socket.gethostname()}"
    previous = celery_state.default_app, getattr(celery_state._tls, "current_app", None)
    try:
        with start_worker(
            app,
            pool="solo",
            concurrency=1,
            perform_ping_check=False,  # Conveyor keeps no Celery results to ping with
            loglevel="WARNING",
            queues=queues or [settings.default_queue],
            hostname=node,
            shutdown_timeout=30,
        ) as worker:
            try:
                yield ConveyorHarness(app, relay, own_ledger=settings.database_url is None)
            finally:
                stop_promptly(worker)
    finally:
        # start_worker made this app Celery's current and default one: give them back.
        celery_state.default_app, celery_state._tls.current_app = previous
        app.ledger.dispose()
        app.close()
