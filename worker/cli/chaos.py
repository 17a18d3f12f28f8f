"""``conveyor chaos``: run the fault scenarios of :mod:`worker.chaos` and report figures.

The harness's default URLs (the local test services' well-known credentials) are options
of this command only: no setting defaults to them. And the harness kills, restarts and
cuts what it runs against, so every URL it is given must be on loopback.
"""

from __future__ import annotations

import ipaddress
import sys
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.table import Table

from conveyor.worker.chaos.invariants import Report
from conveyor.worker.chaos.scenarios import SCENARIOS
from conveyor.worker.cli.common import emit_json, json_option

DEFAULT_PG = "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672//"
SKIPPED = 3
"""Exit status of a run that could not start what its scenario needs (it says why)."""


def on_loopback(url: str) -> bool:
    """Whether every host ``url`` names is this machine's loopback."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.group()
def chaos() -> None:
    """Prove the promises under injected faults."""


@chaos.command("list")
@json_option
def chaos_list(as_json: bool) -> None:
    """The scenarios and what each breaks."""
    if as_json:
        emit_json({name: s.description for name, s in SCENARIOS.items()})
        return
    for name, scenario in SCENARIOS.items():
        only = "" if len(scenario.brokers) > 1 else f" ({scenario.brokers[0]} only)"
        click.echo(f"{name:<24} {scenario.description}{only}")


def report_table(report: Report) -> Table:
    table = Table("figure", "value", title=f"chaos {report.scenario} on {report.broker}")
    rows = [
        ("seed", report.seed),
        ("jobs", report.jobs),
        *((f"faults: {kind}", count) for kind, count in sorted(report.faults.items())),
        ("succeeded", report.succeeded),
        ("dead", report.dead),
        ("lost", report.lost),
        ("duplicated effects", report.duplicated_effects),
        ("retries", report.retries),
        ("lost attempts (recovered)", report.lost_attempts),
        ("p50 to terminal (s)", report.p50_s),
        ("p95 to terminal (s)", report.p95_s),
        ("elapsed (s)", report.elapsed_s),
        ("invariants", "hold" if report.ok else f"{len(report.violations)} violated"),
    ]
    for name, value in rows:
        table.add_row(name, "-" if value is None else str(value))
    return table


@chaos.command("run")
@click.argument("scenario", type=click.Choice(sorted(SCENARIOS)))
@click.option("--broker", type=click.Choice(["redis", "rabbitmq"]), default="redis")
@click.option("--jobs", type=click.IntRange(1, 100_000), default=300, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(10), help="Bound on the run.")
@click.option(
    "--max-faults",
    type=click.IntRange(1),
    help="Inject at most this many faults (default: until the jobs are done).",
)
@click.option("--pg-url", default=DEFAULT_PG, show_default=True, help="PostgreSQL server.")
@click.option("--redis-url", default=DEFAULT_REDIS, show_default=True)
@click.option("--amqp-url", default=DEFAULT_AMQP, show_default=True)
@json_option
def chaos_run(
    scenario: str,
    broker: str,
    jobs: int,
    seed: int,
    timeout_s: float | None,
    max_faults: int | None,
    pg_url: str,
    redis_url: str,
    amqp_url: str,
    as_json: bool,
) -> None:
    """Run SCENARIO; exit 1 if any invariant did not hold. Replay a failure with --seed.

    The services must be on loopback: the scenarios kill, restart and cut them."""
    from conveyor.worker.chaos.harness import run

    for option, url in (("--pg-url", pg_url), ("--redis-url", redis_url), ("--amqp-url", amqp_url)):
        if not on_loopback(url):
            raise click.UsageError(
                f"{option} must be on loopback (127.0.0.1, ::1, localhost): the chaos "
                "harness kills, restarts and cuts the services it runs against"
            )

    if broker not in SCENARIOS[scenario].brokers:
        raise click.UsageError(
            f"scenario {scenario!r} runs on {' and '.join(SCENARIOS[scenario].brokers)} only"
        )
    from conveyor.worker.chaos.hosts import HostsUnavailable

    console = Console(stderr=True)
    try:
        report = run(
            scenario,
            broker=broker,
            jobs=jobs,
            seed=seed,
            pg_url=pg_url,
            redis_url=redis_url,
            amqp_url=amqp_url,
            timeout_s=timeout_s,
            max_faults=max_faults,
            progress=console.print,
        )
    except HostsUnavailable as why:
        click.echo(f"skipped: {why}", err=True)
        sys.exit(SKIPPED)
    if as_json:
        emit_json(report.as_dict())
    else:
        Console().print(report_table(report))
        for violation in report.violations[:20]:
            click.echo(f"violated: {violation}", err=True)
    if not report.ok:
        sys.exit(1)
