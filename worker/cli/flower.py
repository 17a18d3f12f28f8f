"""``conveyor flower``: Flower on Conveyor's app, with credentials required.

The checks and Flower's options are in :mod:`worker.observability.flower`.

Every check runs before anything connects: missing credentials, ``--local-dev`` off
loopback and ``FLOWER_UNAUTHENTICATED_API`` end in one line and exit code 1.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import click
from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from conveyor.worker.cli.common import State, pass_state
from conveyor.worker.errors import UsageError
from conveyor.worker.observability.flower import (
    DB_FILE_NAME,
    FlowerOptions,
    adapt_flower,
    basic_auth,
    check_environment,
    flower_argv,
)

log = logging.getLogger("conveyor.flower")

BIND_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


@click.command()
@click.option("--address", help="Address to listen on (default: CONVEYOR_FLOWER_ADDRESS).")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="Port to listen on (default: CONVEYOR_FLOWER_PORT).",
)
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Flower's state file (default: CONVEYOR_DATA_DIR/{DB_FILE_NAME}).",
)
@click.option(
    "--persistent/--no-persistent",
    default=True,
    show_default=True,
    help="Keep workers and task events across restarts in the state file.",
)
@click.option(
    "--local-dev",
    is_flag=True,
    help="Allow running without credentials, on a loopback address only.",
)
@click.option(
    "--read-only/--no-read-only",
    default=None,
    help="Refuse every change (send-task, revoke, worker control); only look "
    "(default: CONVEYOR_FLOWER_READ_ONLY).",
)
@pass_state
def flower(
    state: State,
    address: str | None,
    port: int | None,
    db: Path | None,
    persistent: bool,
    local_dev: bool,
    read_only: bool | None,
) -> None:
    """Serve Flower (live workers, task events, queue lengths) until stopped."""
    from conveyor.worker.observability.logs import configure_logging

    settings = state.settings
    options = FlowerOptions(
        address=settings.flower_address if address is None else address,
        port=port or settings.flower_port,
        db=(db or settings.data_dir / DB_FILE_NAME).resolve(),
        persistent=persistent,
        local_dev=local_dev,
    )
    check_environment(os.environ)
    auth = basic_auth(settings, options)
    argv = flower_argv(settings, options, auth)
    if auth is None:
        click.echo(
            f"conveyor: warning: --local-dev: Flower on {options.address}:{options.port} "
            "answers without credentials; never use this on a shared host",
            err=True,
        )
    if options.persistent:
        options.db.parent.mkdir(parents=True, exist_ok=True)
    configure_logging(settings.log_level, settings.log_format)
    state.waits_for_ledger = True
    app = state.app  # imports the task modules: their queues are listed below
    adapt_flower(settings, read_only=settings.flower_read_only if read_only is None else read_only)
    enable_task_events(app)
    try:
        app.start(argv)
    except OSError as exc:
        if exc.errno not in BIND_ERRORS:
            raise
        raise UsageError(
            f"cannot listen on {options.address}:{options.port}: {exc.strerror}"
        ) from None


def enable_task_events(app: Celery) -> None:
    """Ask the running workers to send task events now.

    Workers send none until a monitor asks (``CONVEYOR_TASK_EVENTS``); Flower asks every
    5 s, first 5 s after it starts, and would miss the jobs that run in between. A broker
    that does not answer is no reason to refuse to start: Flower's own requests follow.
    """
    try:
        app.control.enable_events()
    except BrokerError as exc:
        log.warning("flower.enable_events_failed", extra={"error": str(exc)})
