"""``conveyor worker`` and ``conveyor relay``: the two long-running processes of the job path."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click
from celery.utils.nodenames import default_nodename, host_format
from sqlalchemy.exc import SQLAlchemyError

from conveyor.config.celery import worker_argv, worker_options
from conveyor.worker.catalog import declare
from conveyor.worker.cli.common import State, autoscale_bounds, metrics_port_option, pass_state
from conveyor.worker.constants import CELERY_QUEUE, RELAY_POLL_S
from conveyor.worker.jobs import REGISTRY
from conveyor.worker.ledger import Ledger
from conveyor.worker.observability.logs import configure_logging
from conveyor.worker.observability.metrics import use_multiprocess
from conveyor.worker.observability.probes import (
    WORKER_LIVENESS,
    ConsumingCollector,
    serve_probes,
)
from conveyor.worker.shutdown import STOPPED_HARD, bound_warm_shutdown

log = logging.getLogger("conveyor.cli")


def declare_jobs(ledger: Ledger, worker: str) -> None:
    """Put this worker's job types in the catalog; a worker starts even if it cannot."""
    try:
        declared = declare(ledger, REGISTRY.values(), worker=worker)
    except SQLAlchemyError:
        log.warning("catalog.declare_failed", exc_info=True)
        return
    log.info("catalog.declared", extra={"jobs": declared, "worker": worker})


@click.command()
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default: all known).")
@click.option("-c", "--concurrency", type=click.IntRange(1, 256), help="Worker processes.")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork")
@click.option("-n", "--hostname", help="Worker node name, e.g. w1@%h (default: conveyor-PID@%h).")
@click.option("--loglevel", default=None, help="Log level (default: CONVEYOR_LOG_LEVEL).")
@click.option(
    "--autoscale",
    metavar="MAX,MIN",
    help="Let the prefork pool grow to MAX processes under load and shrink to MIN when idle.",
)
@metrics_port_option
@pass_state
def worker(
    state: State,
    queues: str | None,
    concurrency: int | None,
    pool: str,
    hostname: str | None,
    loglevel: str | None,
    autoscale: str | None,
    metrics_port: int | None,
) -> None:
    """Run a worker that consumes jobs until stopped (SIGTERM: hand back, finish, exit).

    On SIGTERM it hands back the jobs it prefetched, lets the running ones finish within
    CONVEYOR_SHUTDOWN_TIMEOUT_S and exits 0; past that, or at a second SIGTERM, it stops
    them and exits 1 (docs/operations.md). With a metrics port, it serves /metrics,
    /healthz (consuming?) and /readyz.
    """
    settings = state.settings
    consumed = consumed_queues(queues, settings.default_queue)
    bounds = checked_autoscale(autoscale, pool=pool, settings=settings, queues=consumed)
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
    app.conf.update(worker_options(settings, consumed))  # prefetch of its queue class
    argv = worker_argv(
        queues=",".join(consumed),
        pool=pool,
        loglevel=level,
        concurrency=concurrency,
        hostname=nodename,
        autoscale=bounds,
    )
    declare_jobs(app.ledger, nodename)
    bound_warm_shutdown(settings.shutdown_timeout_s)
    status = run_celery(app, argv) or int(STOPPED_HARD.is_set())
    if status:
        raise SystemExit(status)


def run_celery(app: Any, argv: list[str]) -> int:
    """Run Celery's command line for ``app`` and return its exit status.

    What ``app.worker_main`` does, except that it keeps the status, which Celery drops
    (``app.start`` returns nothing when the command returns normally): an "Unrecoverable
    error" (a broker that refuses a declaration, say) must end the process non-zero, so that
    a supervisor restarts it and an operator sees it.
    """
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = app
    try:
        status = celery_command.main(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exit_:
        status = exit_.exit_code
    finally:
        celery_command.params[0].default = None
    return status if isinstance(status, int) else 0


def checked_autoscale(
    option: str | None, *, pool: str, settings: Any, queues: list[str]
) -> tuple[int, int] | None:
    """``--autoscale MAX,MIN`` as numbers; refused where Celery cannot autoscale (a pool
    other than prefork, a quorum queue among ``queues`` on RabbitMQ)."""
    if option is None:
        return None
    bounds = autoscale_bounds(option)
    if pool != "prefork":
        raise click.BadParameter(f"the {pool} pool cannot autoscale", param_hint="--autoscale")
    quorum = settings.quorum_queues(queues)
    if quorum:
        raise click.BadParameter(
            f"workers on quorum queues ({', '.join(quorum)}) cannot autoscale "
            "(Celery does not support it)",
            param_hint="--autoscale",
        )
    return bounds


def consumed_queues(option: str | None, default_queue: str) -> list[str]:
    """The queues a worker consumes: ``-Q``'s, or the default queue and every job's own;
    with the default queue always :data:`CELERY_QUEUE`, where Celery producers that name no
    queue publish."""
    if option is None:
        names = {default_queue} | {spec.queue for spec in REGISTRY.values() if spec.queue}
    else:
        names = {name.strip() for name in option.split(",") if name.strip()}
        if not names:
            raise click.UsageError("-Q/--queues names no queue", ctx=None)
    if default_queue in names:
        names.add(CELERY_QUEUE)
    return sorted(names)


@click.command()
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

    Workers do this too unless CONVEYOR_RELAY_IN_WORKERS=false; of all the relays, one
    elected leader acts at a time, the others stand by.

    With a metrics port, it serves /metrics (with the ledger's queue gauges), /healthz (a
    pass finished lately) and /readyz.
    """
    from conveyor.worker.leader import Leadership, holder_name
    from conveyor.worker.relay import Relay

    settings = state.settings
    configure_logging(settings.log_level, settings.log_format)
    state.waits_for_ledger = True
    leadership = Leadership(state.app.ledger, holder=holder_name())
    runner = Relay(state.app, poll_s=poll_s, alive_file=alive_file, leadership=leadership)
    port = metrics_port if metrics_port is not None else settings.metrics_port
    if port is not None:
        serve_probes(
            state.app, port=port, live=lambda: runner.liveness.live, with_queue_gauges=True
        )
    runner.stop_on_signals()
    runner.run()
