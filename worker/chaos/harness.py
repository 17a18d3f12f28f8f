"""One chaos run, start to finish: services, jobs, faults, quiescence, invariants."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from sqlalchemy import func, select

from conveyor.config import load_settings
from conveyor.config.settings import sqlalchemy_url
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.chaos.effects import metadata as chaos_metadata
from conveyor.worker.chaos.invariants import Report, check
from conveyor.worker.chaos.plan import CHAOS_TASK, JobPlan, plan_jobs
from conveyor.worker.chaos.proxy import FaultProxy
from conveyor.worker.chaos.scenarios import SCENARIOS, Faults, Request, Services
from conveyor.worker.chaos.services import PostgresInstance, RabbitInstance, RedisInstance
from conveyor.worker.chaos.stack import Stack
from conveyor.worker.client import enqueue
from conveyor.worker.ledger import make_engine
from conveyor.worker.migrate import upgrade
from conveyor.worker.models import TERMINAL_STATES, Job

CHAOS_MODULES = ["conveyor.worker.chaos.jobs", "conveyor.tasks.demo"]
"""The chaos job, and ``demo.work``: the schema its schema-invalid poison messages break."""
WORKERS = 2
CONCURRENCY = 2

Progress = Callable[[str], None]


@contextmanager
def scratch_database(admin_url: str, name: str) -> Iterator[str]:
    """A fresh database on the PostgreSQL server at ``admin_url``, dropped afterwards."""
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{credentials}127.0.0.1:{port}"))


def inject_poison(app: ConveyorApp, broker_url: str, queue: str, count: int) -> dict[str, str]:
    """Publish ``count`` poison messages straight onto ``queue``; returns id -> expected reason."""
    expected: dict[str, str] = {}
    if count == 0:
        return expected
    destination = Queue(queue, Exchange(""), routing_key=queue)
    with Connection(broker_url) as connection:
        producer = connection.Producer()
        for i in range(count):
            job_id = str(uuid.uuid4())
            kind = i % 3
            if kind == 0:  # a task message whose body is not JSON
                producer.publish(
                    b"\xff{{ not json",
                    exchange=destination.exchange,
                    routing_key=queue,
                    declare=[destination],
                    headers={"id": job_id, "task": CHAOS_TASK, "lang": "py"},
                    content_type="application/json",
                    content_encoding="binary",
                )
                expected[job_id] = "undecodable"
            elif kind == 1:
                app.send_task("chaos.no-such-task", kwargs={"x": i}, task_id=job_id, queue=queue)
                expected[job_id] = "unknown_task"
            else:
                app.send_task("demo.work", kwargs={"n": -i - 1}, task_id=job_id, queue=queue)
                expected[job_id] = "invalid_payload"
    return expected


def terminal_count(app: ConveyorApp, ids: list[str]) -> int:
    states = [state.value for state in TERMINAL_STATES]
    with app.ledger.session() as session:
        return int(
            session.scalar(select(func.count()).where(Job.id.in_(ids), Job.state.in_(states))) or 0
        )


def standard_services(request: Request, cleanup: ExitStack) -> Services:
    """The shared broker and a scratch database, or instances of the run's own where the
    scenario breaks one (``own_broker``, ``own_database``)."""
    scenario, workdir = request.scenario, request.workdir
    instance: RedisInstance | RabbitInstance | None = None
    if scenario.own_broker:
        instance = (RedisInstance if request.broker == "redis" else RabbitInstance)(
            workdir / "broker"
        )
        instance.start()
        cleanup.callback(instance.stop)
        broker_url = instance.url
    else:
        broker_url = request.shared_broker_url
    database: PostgresInstance | None = None
    if scenario.own_database:
        database = PostgresInstance(workdir / "pg")
        database.init()
        database.start()
        cleanup.callback(database.stop)
        db_url = database.url
    else:
        db_url = request.scratch_database(cleanup)
    return Services(broker_url, db_url, broker=instance, database=database)


def run(
    scenario_name: str,
    *,
    broker: str,
    jobs: int,
    seed: int,
    pg_url: str,
    redis_url: str,
    amqp_url: str,
    timeout_s: float | None = None,
    max_faults: int | None = None,
    progress: Progress = lambda _: None,
) -> Report:
    """Run one scenario and return its report (see :mod:`worker.chaos.invariants`);
    ``max_faults`` bounds the faults injected (None: until the jobs are done)."""
    scenario = SCENARIOS[scenario_name]
    run_id = f"{scenario_name}-{broker}-{seed}-{uuid.uuid4().hex[:6]}"
    queue = f"chaos-{run_id}"
    bound_s = timeout_s or 120 + jobs * 0.1
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-chaos-"))
    workdir.chmod(0o755)  # the run's own PostgreSQL and RabbitMQ run as their own users
    if broker not in scenario.brokers:
        raise ValueError(
            f"scenario {scenario_name!r} runs on {' and '.join(scenario.brokers)}, not {broker}"
        )
    report = Report(scenario=scenario_name, broker=broker, seed=seed, jobs=jobs, faults={})
    started = time.monotonic()
    with ExitStack() as cleanup:
        topology = (scenario.services or standard_services)(
            Request(scenario, broker, workdir, pg_url, redis_url, amqp_url), cleanup
        )
        broker_url, db_url = topology.broker_url, topology.db_url
        progress(f"run {run_id}: broker {topology.describe()}, workdir {workdir}")
        ledger_url = sqlalchemy_url(db_url)
        upgrade(ledger_url)
        engine = make_engine(ledger_url)
        chaos_metadata.create_all(engine)
        engine.dispose()
        worker_broker_url, proxy = broker_url, None
        if scenario.proxy:
            target = urlsplit(broker_url)
            proxy = FaultProxy(target.hostname or "127.0.0.1", target.port or 0)
            proxy.start()
            cleanup.callback(proxy.stop)
            worker_broker_url = with_port(broker_url, proxy.port)

        settings = load_settings(
            broker_url=broker_url,
            database_url=db_url,
            task_modules=CHAOS_MODULES,
            data_dir=workdir / "var",
            **topology.settings,
        )
        app = create_app(settings)
        cleanup.callback(app.ledger.dispose)
        plans: dict[str, JobPlan] = {}
        for plan in plan_jobs(seed, jobs, scenario.mix):
            plan.payload["run"] = run_id
            plans[enqueue(CHAOS_TASK, plan.payload, queue=queue, app=app)] = plan
        poison = inject_poison(app, broker_url, queue, round(jobs * scenario.poison_share))
        ids = [*plans, *poison]
        progress(f"enqueued {len(plans)} jobs and {len(poison)} poison messages")

        env: dict[str, Any] = {
            **os.environ,
            "CONVEYOR_BROKER_URL": worker_broker_url,
            "CONVEYOR_DATABASE_URL": db_url,
            "CONVEYOR_TASK_MODULES": ",".join(CHAOS_MODULES),
            "CONVEYOR_DATA_DIR": str(workdir / "var"),
            **topology.env,
        }
        stack = Stack(
            workdir,
            env=env,
            queue=queue,
            workers=WORKERS,
            concurrency=CONCURRENCY,
            relay=scenario.relay,
            hosts=topology.hosts,
        )
        stack.start()
        stop = threading.Event()
        faults = Faults(
            stack,
            random.Random(seed),
            stop,
            broker=topology.broker,
            database=topology.database,
            proxy=proxy,
            network=topology.network,
            jobs=len(ids),
            budget=max_faults,
            lease_s=settings.job_lease_s,
        )
        injector = threading.Thread(target=scenario.inject, args=(faults,), daemon=True)
        injector.start()
        deadline = time.monotonic() + bound_s
        done = 0
        while time.monotonic() < deadline:
            with suppress(Exception):  # the ledger may be down on purpose
                done = terminal_count(app, ids)
            if done == len(ids):
                break
            time.sleep(0.5)
        stop.set()
        injector.join(60)
        # Faults are over: give the platform a moment to finish what is still in flight.
        settle = time.monotonic() + min(60.0, bound_s)
        while time.monotonic() < settle and terminal_count(app, ids) < len(ids):
            time.sleep(0.5)
        leftover = stack.stop()
        report.faults = dict(faults.counts)
        report.figures = dict(faults.figures)
        report.elapsed_s = round(time.monotonic() - started, 1)
        check(app.ledger, report, run_id=run_id, plans=plans, poison=poison, leftover_pids=leftover)
    if report.ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        report.violations.append(f"logs kept in {workdir}")
    return report
