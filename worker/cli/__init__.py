"""``conveyor``: the command line for producers, operators and developers.

User mistakes (bad settings, bad arguments, unknown jobs, unreachable services) end in
one line on stderr and a non-zero exit, never a traceback. Every read command takes
``--json`` and then prints only JSON on stdout.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import click
from celery.utils.nodenames import default_nodename, host_format
from kombu.exceptions import OperationalError as BrokerError
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import OperationalError as DatabaseError
from sqlalchemy.exc import ProgrammingError, SQLAlchemyError

from conveyor.config.celery import worker_argv
from conveyor.worker.catalog import declare
from conveyor.worker.cli.api import api, apikey
from conveyor.worker.cli.chaos import chaos
from conveyor.worker.cli.common import (
    State,
    emit_json,
    json_option,
    metrics_port_option,
    pass_state,
)
from conveyor.worker.cli.dlq import dlq
from conveyor.worker.cli.flower import flower
from conveyor.worker.cli.jobs import jobs
from conveyor.worker.constants import RELAY_POLL_S
from conveyor.worker.errors import ConveyorError, UsageError
from conveyor.worker.jobs import REGISTRY
from conveyor.worker.ledger import Ledger
from conveyor.worker.observability.logs import configure_logging
from conveyor.worker.observability.metrics import use_multiprocess
from conveyor.worker.observability.probes import (
    CHECK_TIMEOUT_S,
    WORKER_LIVENESS,
    ConsumingCollector,
    readiness,
    serve_probes,
)

EXIT_ERROR = 1

log = logging.getLogger("conveyor.cli")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Conveyor: a job-processing platform on Celery."""


cli.add_command(dlq)
cli.add_command(chaos)
cli.add_command(api)
cli.add_command(apikey)
cli.add_command(flower)
cli.add_command(jobs)


def declare_jobs(ledger: Ledger, worker: str) -> None:
    """Put this worker's job types in the catalog; a worker starts even if it cannot."""
    try:
        declared = declare(ledger, REGISTRY.values(), worker=worker)
    except SQLAlchemyError:
        log.warning("catalog.declare_failed", exc_info=True)
        return
    log.info("catalog.declared", extra={"jobs": declared, "worker": worker})


@cli.command()
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default: all known).")
@click.option("-c", "--concurrency", type=click.IntRange(1, 256), help="Worker processes.")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork")
@click.option("-n", "--hostname", help="Worker node name, e.g. w1@%h (default: conveyor-PID@%h).")
@click.option("--loglevel", default=None, help="Log level (default: CONVEYOR_LOG_LEVEL).")
@metrics_port_option
@pass_state
def worker(
    state: State,
    queues: str | None,
    concurrency: int | None,
    pool: str,
    hostname: str | None,
    loglevel: str | None,
    metrics_port: int | None,
) -> None:
    """Run a worker that consumes jobs until stopped (SIGTERM: finish, then exit).

    With a metrics port, it serves /metrics, /healthz (consuming?) and /readyz.
    """
    settings = state.settings
    level = loglevel or settings.log_level
    configure_logging(level, settings.log_format)
    port = metrics_port if metrics_port is not None else settings.metrics_port
    if port is not None:
        # Before anything is counted, and before the pool forks its children.
        directory = Path(tempfile.mkdtemp(prefix="conveyor-metrics-"))
        use_multiprocess(directory)
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    state.waits_for_ledger = True
    app = state.app
    # Unique per process unless named: on RabbitMQ a second worker with the same node name
    # dies at start (its control queue is exclusive), e.g. two workers on one host.
    nodename = host_format(default_nodename(hostname or f"conveyor-{os.getpid()}@%h"))
    if port is not None:
        serve_probes(
            app,
            port=port,
            live=lambda: WORKER_LIVENESS.live,
            extra=ConsumingCollector(nodename, WORKER_LIVENESS),
        )
    if queues is None:
        known = {state.settings.default_queue}
        known |= {spec.queue for spec in REGISTRY.values() if spec.queue}
        queues = ",".join(sorted(known))
    argv = worker_argv(
        queues=queues, pool=pool, loglevel=level, concurrency=concurrency, hostname=nodename
    )
    declare_jobs(app.ledger, nodename)
    app.worker_main(argv)


@cli.command()
@click.argument("task")
@click.argument("payload", default="{}")
@click.option("--key", "idempotency_key", help="Idempotency key: enqueue at most once per key.")
@click.option("--queue", help="Queue to use instead of the job's own.")
@click.option("--delay", type=click.FloatRange(0), help="Seconds to wait before running.")
@click.option("--priority", type=click.IntRange(0, 9), help="Priority, 0 to 9.")
@json_option
@pass_state
def enqueue(
    state: State,
    task: str,
    payload: str,
    idempotency_key: str | None,
    queue: str | None,
    delay: float | None,
    priority: int | None,
    as_json: bool,
) -> None:
    """Enqueue TASK with PAYLOAD (a JSON object) and print the job id."""
    from conveyor.worker.client import enqueue as enqueue_job

    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise UsageError(f"PAYLOAD is not valid JSON: {exc}") from None
    job_id = enqueue_job(
        task,
        data,
        idempotency_key=idempotency_key,
        queue=queue,
        delay=delay,
        priority=priority,
        app=state.app,
    )
    if as_json:
        emit_json({"id": job_id})
    else:
        click.echo(job_id)


@cli.command()
@json_option
@pass_state
def queues(state: State, as_json: bool) -> None:
    """Every queue's queued, running, scheduled and dead jobs, its oldest wait, relay lag."""
    from conveyor.worker.operations.stats import queue_stats

    stats = queue_stats(state.app.ledger)
    if as_json:
        emit_json(stats)
        return
    table = Table("queue", "queued", "running", "scheduled", "dead", "oldest queued (s)")
    for queue in stats["queues"]:
        age = queue["oldest_queued_age_s"]
        table.add_row(
            queue["name"],
            str(queue["depth"]),
            str(queue["running"]),
            str(queue["scheduled"]),
            str(queue["dead"]),
            "-" if age is None else f"{age:.1f}",
        )
    console = Console()
    console.print(table)
    console.print(f"relay lag: {stats['relay_lag_s']:.1f}s (oldest due job not yet published)")


@cli.command()
@click.option("--poll", "poll_s", type=click.FloatRange(0.01, 60), default=RELAY_POLL_S)
@click.option(
    "--alive-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Touch this file after every pass (for liveness probes).",
)
@metrics_port_option
@pass_state
def relay(state: State, poll_s: float, alive_file: Path | None, metrics_port: int | None) -> None:
    """Publish due retries and delayed jobs, recover expired leases (SIGTERM stops it).

    With a metrics port, it serves /metrics (with the ledger's queue gauges), /healthz (a
    pass finished lately) and /readyz.
    """
    from conveyor.worker.relay import Relay

    settings = state.settings
    configure_logging(settings.log_level, settings.log_format)
    state.waits_for_ledger = True
    runner = Relay(state.app, poll_s=poll_s, alive_file=alive_file)
    port = metrics_port if metrics_port is not None else settings.metrics_port
    if port is not None:
        serve_probes(state.app, port=port, live=lambda: runner.liveness.live, with_ledger=True)
    runner.stop_on_signals()
    runner.run()


@cli.command()
@click.option("--url", help="Ask a running worker, relay or API instead: its base URL.")
@json_option
@pass_state
def health(state: State, url: str | None, as_json: bool) -> None:
    """Check that the ledger and the broker answer (exit 1 if not), or a process's /healthz.

    With ``--url http://host:9808`` it asks that worker's (or relay's, or API's) liveness
    probe: exit 0 while it is live (a worker: consuming its queues), 1 otherwise.
    """
    checks = {"live": probe_live(url)} if url is not None else readiness(state.app)
    ok = all(result == "ok" for result in checks.values())
    if as_json:
        emit_json({"ok": ok, "checks": checks})
    else:
        for name, result in checks.items():
            click.echo(f"{name}: {result}")
    if not ok:
        sys.exit(EXIT_ERROR)


def probe_live(url: str) -> str:
    """``ok``, or why ``URL/healthz`` did not say the process is live."""
    import httpx

    try:
        answer = httpx.get(url.rstrip("/") + "/healthz", timeout=CHECK_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return f"failed: {type(exc).__name__}"
    return "ok" if answer.status_code == 200 else f"failed: HTTP {answer.status_code}"


@cli.command()
@pass_state
def migrate(state: State) -> None:
    """Apply the ledger's schema migrations (safe to run again)."""
    from conveyor.worker.migrate import upgrade

    before, after = upgrade(state.settings.database)
    if before == after:
        click.echo(f"ledger already at revision {after}")
    else:
        click.echo(f"ledger migrated from {before or 'empty'} to revision {after}")


@cli.command()
@click.option("--jobs", "count", type=click.IntRange(1, 10_000), default=40, show_default=True)
@click.option("-c", "--concurrency", type=click.IntRange(1, 32), default=2, show_default=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(5), default=120, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@json_option
@pass_state
def demo(
    state: State, count: int, concurrency: int, timeout_s: float, seed: int, as_json: bool
) -> None:
    """Start a worker, run a mix of jobs through it and summarise what happened."""
    from conveyor.worker.demo import run_demo, with_demo_jobs

    # Before the settings are read: this process and the worker it starts load the demo jobs.
    os.environ["CONVEYOR_TASK_MODULES"] = with_demo_jobs(os.environ.get("CONVEYOR_TASK_MODULES"))

    summary = run_demo(
        state.settings,
        app=state.app,
        count=count,
        concurrency=concurrency,
        timeout_s=timeout_s,
        seed=seed,
        console=Console(stderr=as_json),
    )
    if as_json:
        emit_json(summary)
    if summary["unfinished"]:
        fail(f"{summary['unfinished']} of {count} jobs did not finish within {timeout_s:g}s")


def fail(message: str) -> NoReturn:
    click.echo(f"conveyor: error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``conveyor`` command."""
    try:
        cli.main(args=argv, prog_name="conveyor", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        fail("aborted")
    except ConveyorError as exc:
        fail(str(exc))
    except ProgrammingError as exc:
        fail(f"the ledger's schema is missing or old ({exc.orig}); run `conveyor migrate`")
    except DatabaseError as exc:
        fail(f"cannot reach the ledger database: {str(exc.orig).strip().splitlines()[0]}")
    except BrokerError as exc:
        fail(f"cannot reach the broker: {exc}")


if __name__ == "__main__":
    main()
