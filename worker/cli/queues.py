"""``conveyor queues``: every queue's jobs and pause, and ``pause``/``resume`` for one queue."""

from __future__ import annotations

from typing import Any

import click

from conveyor.worker.cli.common import State, default_actor, emit_json, json_option, pass_state


@click.group(invoke_without_command=True)
@json_option
@pass_state
@click.pass_context
def queues(ctx: click.Context, state: State, as_json: bool) -> None:
    """Every queue's queued, running, scheduled and dead jobs, its oldest wait, relay lag.

    A paused queue shows as paused (``conveyor queues pause Q``): its jobs wait until it is
    resumed. Below the table: broker queues that hold messages no worker consumes (in
    ``--json``, ``unconsumed``: null when the broker could not be asked), and the periodic
    jobs with their last and next ticks (``schedules``; ``conveyor schedules list``).
    """
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    from conveyor.worker.cli.schedules import print_schedules
    from conveyor.worker.operations.schedules import schedule_views
    from conveyor.worker.operations.stats import queue_stats

    stats = queue_stats(state.app.ledger)
    stranded = unconsumed_on_broker(state, stats["queues"])
    periodic = schedule_views(state.app)
    if as_json:
        emit_json(stats | {"unconsumed": stranded, "schedules": periodic})
        return
    table = Table("queue", "queued", "running", "scheduled", "dead", "oldest queued (s)", "paused")
    for queue in stats["queues"]:
        age = queue["oldest_queued_age_s"]
        table.add_row(
            queue["name"],
            str(queue["depth"]),
            str(queue["running"]),
            str(queue["scheduled"]),
            str(queue["dead"]),
            "-" if age is None else f"{age:.1f}",
            "paused" if queue["paused"] else "",
        )
    console = Console()
    console.print(table)
    console.print(f"relay lag: {stats['relay_lag_s']:.1f}s (oldest due job not yet published)")
    for queue in stranded or []:
        console.print(
            f"[bold red]{queue['name']}[/]: {queue['messages']} messages on the broker, "
            "and no worker consumes it"
        )
    if periodic:
        print_schedules(periodic)


def unconsumed_on_broker(state: State, queues: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Broker queues holding messages no worker consumes (:mod:`worker.operations.broker`),
    or None, said on stderr, when the broker cannot be asked."""
    from conveyor.worker.operations.broker import unconsumed_of

    found = unconsumed_of(state.app, queues)
    if found is None:
        click.echo("conveyor: warning: the broker could not be asked for its queues", err=True)
        return None
    return [{"name": queue.name, "messages": queue.messages} for queue in found]


@queues.command("pause")
@click.argument("queue")
@click.option("--reason", help="Why (kept with the pause and in the audit log).")
@click.option("--actor", default=default_actor, help="Who is pausing (for the audit log).")
@pass_state
def pause(state: State, queue: str, reason: str | None, actor: str) -> None:
    """Pause QUEUE on every worker: running jobs finish, no new job of QUEUE starts.

    Its jobs stay queued (nothing is lost) until ``conveyor queues resume QUEUE``; workers
    started meanwhile do not consume it either. Takes effect within about a second.
    """
    check_name(queue)
    if state.ledger.pause(queue, actor=actor, reason=reason):
        click.echo(f"paused {queue}: workers stop starting its jobs within a second")
    else:
        click.echo(f"{queue} was paused already")


@queues.command("resume")
@click.argument("queue")
@click.option("--actor", default=default_actor, help="Who is resuming (for the audit log).")
@pass_state
def resume(state: State, queue: str, actor: str) -> None:
    """Resume QUEUE: workers that consume it start its waiting jobs again."""
    check_name(queue)
    if state.ledger.resume(queue, actor=actor):
        click.echo(f"resumed {queue}")
    else:
        click.echo(f"{queue} was not paused")


def check_name(queue: str) -> None:
    """A queue name the ledger can hold (1 to 200 characters, not blank)."""
    if not queue.strip() or len(queue) > 200:
        raise click.BadParameter("a queue name has 1 to 200 characters", param_hint="QUEUE")
