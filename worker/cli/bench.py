"""``conveyor bench``: Conveyor against plain Celery and Dramatiq on this machine."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from conveyor.worker.bench.runner import KINDS
from conveyor.worker.bench.systems import SYSTEMS
from conveyor.worker.cli.common import emit_json, json_option
from conveyor.worker.errors import UsageError

BROKERS = ("redis", "rabbitmq")


class Names(click.ParamType[tuple[str, ...]]):
    """A comma-separated choice of several of ``allowed``."""

    name = "A,B,..."

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = allowed

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        names = tuple(name.strip() for name in str(value).split(",") if name.strip())
        if not names or set(names) - set(self.allowed):
            self.fail(f"choose from {', '.join(self.allowed)}, comma-separated", param, ctx)
        return names


@click.command()
@click.option("--brokers", type=Names(BROKERS), default=",".join(BROKERS), show_default=True)
@click.option("--systems", type=Names(SYSTEMS), default=",".join(SYSTEMS), show_default=True)
@click.option(
    "--kinds",
    type=Names(tuple(KINDS)),
    default="noop",
    show_default=True,
    help="Jobs: noop (returns at once), io5ms (waits 5 ms, as on I/O).",
)
@click.option(
    "--jobs",
    type=click.IntRange(10),
    default=20_000,
    show_default=True,
    help="Backlog drained per run.",
)
@click.option(
    "--enqueue-jobs",
    type=click.IntRange(1),
    default=2_000,
    show_default=True,
    help="Of the backlog, jobs enqueued one call at a time (the rest in bulk where there is bulk).",
)
@click.option("--latency-jobs", type=click.IntRange(0), default=1_000, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(1),
    default=200.0,
    show_default=True,
    help="Jobs/s of the latency phase.",
)
@click.option("--repeat", type=click.IntRange(1), default=3, show_default=True)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="Worker processes of each system.",
)
@click.option(
    "--redis-url",
    default="redis://127.0.0.1:6379/13",
    show_default=True,
    help="Redis broker (and the jobs' counters).",
)
@click.option("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672//", show_default=True)
@click.option(
    "--database-url",
    default="postgresql://postgres@127.0.0.1:5432/postgres",
    show_default=True,
    help="PostgreSQL where each Conveyor run creates (and drops) a ledger database.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-results"),
    show_default=True,
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(1),
    default=900.0,
    show_default=True,
    help="Seconds one drain may take.",
)
@json_option
def bench(
    brokers: tuple[str, ...],
    systems: tuple[str, ...],
    kinds: tuple[str, ...],
    jobs: int,
    enqueue_jobs: int,
    latency_jobs: int,
    rate: float,
    repeat: int,
    concurrency: int,
    redis_url: str,
    rabbitmq_url: str,
    database_url: str,
    out: Path,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Measure plain Celery, Conveyor and Dramatiq side by side on this machine.

    For each broker, job kind and repetition: enqueue rates (one by one, and in bulk),
    the drain rate of a backlog, enqueue-to-start latency at a fixed rate, the worker's
    peak memory and CPU per job. Prints a table of medians with the ratio to plain Celery
    and writes bench.json and bench.png to --out (docs/benchmarks.md). Needs Redis and,
    for RabbitMQ, RabbitMQ; PostgreSQL for Conveyor's ledger.
    """
    from conveyor.worker.bench.report import render, write
    from conveyor.worker.bench.runner import BenchError, Options, run

    urls = {"redis": redis_url, "rabbitmq": rabbitmq_url}
    if not database_url.startswith("postgresql"):
        raise UsageError("--database-url must be a PostgreSQL URL")
    options = Options(
        brokers={name: urls[name] for name in brokers},
        database_url=database_url,
        counter_url=redis_url,
        systems=systems,
        kinds=kinds,
        jobs=jobs,
        enqueue_jobs=enqueue_jobs,
        latency_jobs=latency_jobs,
        rate=rate,
        repeat=repeat,
        concurrency=concurrency,
        timeout_s=timeout_s,
        workdir=out,
    )
    # A stopped run still removes what it made (workers, queues, databases): SIGTERM
    # unwinds like Ctrl-C instead of ending the process where it stands.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        report = run(options)
    except BenchError as exc:
        raise UsageError(f"bench: {exc}") from None
    data, picture = write(report, out)
    if as_json:
        emit_json(report)
        return
    click.echo(render(report))
    click.echo(f"wrote {data} and {picture}")
