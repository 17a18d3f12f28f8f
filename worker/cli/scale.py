"""``conveyor scale``: per queue, the backlog, its consumers and what would drain it in time;
``conveyor scale apply``: change one running worker through Celery's remote control."""

from __future__ import annotations

from typing import Any

import click

from conveyor.worker.cli.common import (
    State,
    autoscale_bounds,
    emit_json,
    json_option,
    pass_state,
)


@click.group(invoke_without_command=True)
@click.option(
    "--target",
    "target_s",
    type=click.FloatRange(1, 86_400),
    default=300.0,
    show_default=True,
    help="Seconds the backlog should drain within.",
)
@json_option
@pass_state
@click.pass_context
def scale(ctx: click.Context, state: State, target_s: float, as_json: bool) -> None:
    """Per queue: depth, oldest wait, consuming workers, and the processes to drain it in time.

    The rate is the jobs of the queue that finished in the last five minutes, per process
    of the workers consuming it now; the recommendation is the processes that rate needs to
    drain what is queued and running within --target seconds.
    """
    if ctx.invoked_subcommand is not None:
        return
    from conveyor.worker.operations.scale import as_dict, fleet, needs

    workers = fleet(state.app)
    queues = needs(state.app.ledger, workers, target_s=target_s)
    if as_json:
        emit_json(
            {
                "target_s": target_s,
                "queues": [as_dict(q) for q in queues],
                "workers": [as_dict(w) for w in workers],
            }
        )
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(
        "queue", "queued", "running", "oldest (s)", "workers", "processes", "jobs/s",
        "drain (s)", "recommended", "advice",
    )  # fmt: skip
    for q in queues:
        table.add_row(
            q.name,
            str(q.depth),
            str(q.running),
            _number(q.oldest_queued_age_s),
            ", ".join(q.workers) or "-",
            str(q.processes),
            f"{q.rate_per_s:.2f}",
            _number(q.drain_s),
            "-" if q.recommended_processes is None else str(q.recommended_processes),
            q.advice,
        )
    console.print(table)
    fleet_table = Table("worker", "pool", "processes", "autoscale", "queues")
    for w in workers:
        bounds = f"{w.autoscale['min']}-{w.autoscale['max']}" if w.autoscale else "-"
        fleet_table.add_row(w.name, w.pool, str(w.processes), bounds, ", ".join(w.queues))
    console.print(fleet_table if workers else "no worker answered")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _bounds(_ctx: Any, _param: Any, value: str | None) -> tuple[int, int] | None:
    return None if value is None else autoscale_bounds(value)


@scale.command("apply")
@click.option("--worker", "worker_name", required=True, help="The worker's node name.")
@click.option("--grow", type=click.IntRange(1, 256), help="Add N pool processes.")
@click.option("--shrink", type=click.IntRange(1, 256), help="Remove N pool processes.")
@click.option("--autoscale", callback=_bounds, help="New autoscale bounds MAX,MIN.")
@click.option("--add-queue", help="Start consuming this queue.")
@click.option("--cancel-queue", help="Stop consuming this queue.")
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@json_option
@pass_state
def apply_change(
    state: State,
    worker_name: str,
    grow: int | None,
    shrink: int | None,
    autoscale: tuple[int, int] | None,
    add_queue: str | None,
    cancel_queue: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Change one running worker: grow or shrink its pool, its autoscale bounds, its queues.

    Refuses, saying why, what the worker cannot do (a solo or threads pool cannot resize,
    quorum queues cannot autoscale, a worker started without --autoscale has no bounds).
    """
    from conveyor.worker.operations.scale import apply, fleet, plan

    change = plan(
        state.settings,
        fleet(state.app, only=worker_name),
        worker=worker_name,
        grow=grow,
        shrink=shrink,
        autoscale=autoscale,
        add_queue=add_queue,
        cancel_queue=cancel_queue,
    )
    answer = None if dry_run else apply(state.app, change)
    if as_json:
        emit_json(
            {
                "worker": change.worker,
                "command": change.command,
                "arguments": change.arguments,
                "summary": change.summary,
                "dry_run": dry_run,
                "answer": answer,
            }
        )
    elif dry_run:
        click.echo(f"would {change.summary} (dry run: nothing sent)")
    else:
        click.echo(f"{change.summary}: {answer}")
