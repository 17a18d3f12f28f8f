"""``conveyor jobs``: show, list, the retry policy, and the catalog of declared jobs."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from rich.console import Console
from rich.table import Table

from conveyor.worker.catalog import catalog_view
from conveyor.worker.cli.common import State, emit_json, json_option, pass_state
from conveyor.worker.jobs import import_task_modules, spec_for
from conveyor.worker.models import JobState
from conveyor.worker.operations.views import job_view
from conveyor.worker.policy import schedule, worst_case_total_s


@click.group()
def jobs() -> None:
    """Look at jobs in the ledger."""


@jobs.command("show")
@click.argument("job_id")
@json_option
@pass_state
def jobs_show(state: State, job_id: str, as_json: bool) -> None:
    """Show one job."""
    view = job_view(state.ledger.require(job_id))
    if as_json:
        emit_json(view)
        return
    for name, value in view.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        click.echo(f"{name:>16}: {'-' if shown is None else shown}")


@jobs.command("list")
@click.option("--state", "job_state", type=click.Choice([s.value for s in JobState]))
@click.option("--task")
@click.option("--queue")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@pass_state
def jobs_list(
    state: State,
    job_state: str | None,
    task: str | None,
    queue: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    rows = state.ledger.list(state=job_state, task=task, queue=queue, limit=limit)
    views = [job_view(row) for row in rows]
    if as_json:
        emit_json(views)
        return
    table = Table("id", "task", "queue", "state", "attempts", "created")
    for view in views:
        table.add_row(
            view["id"],
            view["task"],
            view["queue"],
            view["state"],
            str(view["attempts"]),
            view["created_at"][:19],
        )
    Console().print(table)


@jobs.command("policy")
@click.argument("task")
@json_option
@pass_state
def jobs_policy(state: State, task: str, as_json: bool) -> None:
    """Print the retry schedule TASK follows until it is dead-lettered."""
    import_task_modules(state.settings)
    spec = spec_for(task)
    steps = schedule(spec.policy)
    total_s = worst_case_total_s(spec.policy)
    if as_json:
        emit_json(
            {
                "task": spec.name,
                "max_attempts": spec.policy.max_attempts,
                "retries": [asdict(step) for step in steps],
                "max_total_delay_s": total_s,
            }
        )
        return
    table = Table("after attempt", "waits at least (s)", "waits at most (s)")
    for step in steps:
        table.add_row(str(step.attempt), f"{step.min_delay_s:g}", f"{step.max_delay_s:g}")
    console = Console()
    console.print(table)
    console.print(
        f"{spec.name}: {spec.policy.max_attempts} attempts; dead-lettered at most "
        f"{total_s:g}s of waiting after the first failure (plus run time)."
    )


@jobs.command("catalog")
@json_option
@pass_state
def jobs_catalog(state: State, as_json: bool) -> None:
    """List the job types the workers declared: what producers can enqueue without the code."""
    rows = catalog_view(state.ledger.catalog())
    if as_json:
        emit_json(rows)
        return
    table = Table("name", "queue", "attempts", "schema", "version", "declared by", "at")
    for row in rows:
        table.add_row(
            row["name"],
            row["queue"] or "(default)",
            str(row["max_attempts"]),
            "yes" if row["payload_schema"] else "any object",
            row["version"],
            row["declared_by"],
            row["declared_at"][:19],
        )
    Console().print(table)
