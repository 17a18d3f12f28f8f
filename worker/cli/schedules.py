"""``conveyor schedules``: periodic jobs' last and next ticks; pause, resume, run-now."""

from __future__ import annotations

from typing import Any

import click

from conveyor.worker.cli.common import (
    State,
    default_actor,
    emit_json,
    fail,
    json_option,
    pass_state,
)


@click.group()
def schedules() -> None:
    """Periodic jobs: list them, pause and resume one, or run one now."""


@schedules.command("list")
@json_option
@pass_state
def list_schedules(state: State, as_json: bool) -> None:
    """Every schedule the relays have synced: its task, when it ticks, whether it is
    paused, its last tick (with its outcome and its job's state) and its next tick."""
    from conveyor.worker.operations.schedules import schedule_views

    views = schedule_views(state.app)
    if as_json:
        emit_json(views)
        return
    print_schedules(views)


def print_schedules(views: list[dict[str, Any]]) -> None:
    """The schedules as a table (also below ``conveyor queues``)."""
    from rich.console import Console
    from rich.table import Table

    table = Table("schedule", "task", "when", "paused", "last tick", "last job", "next tick")
    for view in views:
        last = view["last_tick_at"]
        outcome = view["last_outcome"] or ""
        table.add_row(
            view["name"],
            view["task"],
            view["schedule"].split(" catch_up=")[0],
            "paused" if view["paused"] else "",
            f"{last:%Y-%m-%d %H:%M:%S}Z {outcome}" if last is not None else outcome or "-",
            view["last_job_state"] or "-",
            "-" if view["paused"] else f"{view['next_tick_at']:%Y-%m-%d %H:%M:%S}Z",
        )
    Console().print(table)


@schedules.command("pause")
@click.argument("name")
@click.option("--actor", default=default_actor, help="Who is pausing (for the audit log).")
@pass_state
def pause(state: State, name: str, actor: str) -> None:
    """Pause schedule NAME: its ticks enqueue nothing until it is resumed."""
    changed = state.ledger.pause_schedule(name, actor=actor)
    if changed is None:
        fail(f"no schedule {name!r} (see `conveyor schedules list`)")
    click.echo(f"paused {name}" if changed else f"{name} was paused already")


@schedules.command("resume")
@click.argument("name")
@click.option("--actor", default=default_actor, help="Who is resuming (for the audit log).")
@pass_state
def resume(state: State, name: str, actor: str) -> None:
    """Resume schedule NAME from its next tick on; ticks missed while paused never run."""
    changed = state.ledger.resume_schedule(name, actor=actor)
    if changed is None:
        fail(f"no schedule {name!r} (see `conveyor schedules list`)")
    click.echo(f"resumed {name}" if changed else f"{name} was not paused")


@schedules.command("run-now")
@click.argument("name")
@click.option("--actor", default=default_actor, help="Who runs it (for the audit log).")
@json_option
@pass_state
def run_now(state: State, name: str, actor: str, as_json: bool) -> None:
    """Enqueue one job of schedule NAME now, besides its ticks; prints the job's id."""
    from conveyor.worker.operations.schedules import run_now as enqueue_now

    view = state.ledger.schedule(name)
    if view is None:
        fail(f"no schedule {name!r} (see `conveyor schedules list`)")
    job_id = enqueue_now(state.app, view, actor=actor)
    if as_json:
        emit_json({"schedule": name, "job_id": job_id})
    else:
        click.echo(job_id)
