"""``conveyor dlq``: triage of dead jobs from the command line (:mod:`worker.operations.dlq`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from conveyor.worker.cli.common import State, default_actor, emit_json, json_option, pass_state
from conveyor.worker.constants import DeadReason
from conveyor.worker.errors import JobNotFound, UsageError
from conveyor.worker.models import utcnow
from conveyor.worker.operations.dlq import DeadFilter, Outcome, dead_letter_view, list_dead
from conveyor.worker.operations.views import iso


def parse_when(value: str | None) -> datetime | None:
    """An ISO 8601 time (UTC if no zone) or an age such as ``30m``, ``2h``, ``7d``."""
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[:-1].isdigit() and value[-1:] in units:
        return utcnow() - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{value!r} is neither an ISO 8601 time nor an age like 30m") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def dead_filter(
    ids: tuple[str, ...], every: bool, options: dict[str, str | None], *, needs_scope: bool
) -> DeadFilter:
    where = DeadFilter(
        ids=ids,
        queue=options["queue"],
        task=options["task"],
        error_type=options["error_type"],
        reason=DeadReason(options["reason"]) if options["reason"] else None,
        since=parse_when(options["since"]),
        until=parse_when(options["until"]),
    )
    if needs_scope and not every and where == DeadFilter():
        raise UsageError("name job ids, give a filter, or pass --all")
    return where


def filter_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option("--queue", help="Only dead jobs of this queue."),
            click.option("--task", help="Only dead jobs of this task."),
            click.option("--error-type", help="Only this exception type (module.QualName)."),
            click.option(
                "--reason",
                type=click.Choice([reason.value for reason in DeadReason]),
                help="Only dead jobs dead-lettered for this reason.",
            ),
            click.option("--since", help="Dead at or after: ISO 8601 time or age (30m, 2h, 7d)."),
            click.option("--until", help="Dead before: ISO 8601 time or age."),
        ]
    ):
        command = option(command)
    return command


@click.group()
def dlq() -> None:
    """Triage the dead-letter queue: list, show, replay, purge, audit."""


@dlq.command("list")
@filter_options
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@json_option
@pass_state
def dlq_list(state: State, /, limit: int, as_json: bool, **options: str | None) -> None:
    """List dead jobs, oldest first."""
    where = dead_filter((), False, options, needs_scope=False)
    views = [
        dead_letter_view(job) for job in list_dead(state.app, where, limit=limit, lagging=True)
    ]
    if as_json:
        emit_json(views)
        return
    table = Table("id", "task", "queue", "reason", "error", "attempts", "dead at")
    for view in views:
        error = f"{view['error_type']}: {view['error_message'] or ''}"[:60]
        table.add_row(
            view["id"],
            view["task"],
            view["queue"],
            view["reason"] or "",
            error,
            str(view["attempts"]),
            (view["dead_at"] or "")[:19],
        )
    Console().print(table)


@dlq.command("show")
@click.argument("job_id")
@json_option
@pass_state
def dlq_show(state: State, job_id: str, as_json: bool) -> None:
    """Show one dead job with its traceback."""
    found = list_dead(state.app, DeadFilter(ids=(job_id,)), limit=1)
    if not found:
        raise JobNotFound(f"no dead job with id {job_id!r}")
    view = dead_letter_view(found[0], traceback=True)
    if as_json:
        emit_json(view)
        return
    traceback_text = view.pop("traceback")
    for name, value in view.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        click.echo(f"{name:>16}: {'-' if shown is None else shown}")
    click.echo(traceback_text or "(no traceback)")


def report(outcome: Outcome, as_json: bool) -> None:
    if as_json:
        emit_json({**asdict(outcome), "count": outcome.count})
        return
    verb = (
        f"would {outcome.action}" if outcome.dry_run else f"{outcome.action}ed".replace("ee", "e")
    )
    click.echo(f"{verb} {outcome.count} dead job(s)")
    for old, new in zip(outcome.job_ids, outcome.new_ids, strict=False):
        click.echo(f"  {old} -> {new}")
    for job_id, why in outcome.skipped.items():
        click.echo(f"  skipped {job_id}: {why}")


@dlq.command("replay")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Replay every dead job (or every match).")
@filter_options
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@click.option("--rate", "rate_per_s", type=click.FloatRange(0.01), help="Jobs per second.")
@click.option("--actor", default=default_actor, help="Who is replaying (for the audit log).")
@json_option
@pass_state
def dlq_replay(
    state: State,
    /,
    job_ids: tuple[str, ...],
    every: bool,
    dry_run: bool,
    rate_per_s: float | None,
    actor: str,
    as_json: bool,
    **options: str | None,
) -> None:
    """Put dead jobs back on their original queues as new jobs (attempts from zero)."""
    from conveyor.worker.operations.dlq import replay

    where = dead_filter(job_ids, every, options, needs_scope=True)
    outcome = replay(state.app, where, actor=actor, dry_run=dry_run, rate_per_s=rate_per_s)
    report(outcome, as_json)


@dlq.command("purge")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Purge every dead job (or every match).")
@filter_options
@click.option("--dry-run", is_flag=True, help="Show what would be purged; change nothing.")
@click.option("--actor", default=default_actor, help="Who is purging (for the audit log).")
@json_option
@pass_state
def dlq_purge(
    state: State,
    /,
    job_ids: tuple[str, ...],
    every: bool,
    dry_run: bool,
    actor: str,
    as_json: bool,
    **options: str | None,
) -> None:
    """Delete dead jobs for good, from the ledger and the broker's dead-letter queue."""
    from conveyor.worker.operations.dlq import purge

    where = dead_filter(job_ids, every, options, needs_scope=True)
    report(purge(state.app, where, actor=actor, dry_run=dry_run), as_json)


@dlq.command("audit")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@pass_state
def dlq_audit(state: State, limit: int, as_json: bool) -> None:
    """The audit log, newest first: who did what, when, to how many.

    Replays and purges, queue and schedule pauses, API key changes, console sign-ins.
    """
    from conveyor.worker.operations.dlq import audit_log

    entries = audit_log(state.app, limit=limit)
    if as_json:
        emit_json(
            [
                {
                    "at": iso(entry.at),
                    "actor": entry.actor,
                    "action": entry.action,
                    "filters": entry.filters,
                    "count": entry.count,
                    "job_ids": entry.job_ids,
                }
                for entry in entries
            ]
        )
        return
    table = Table("at", "actor", "action", "count", "filters")
    for entry in entries:
        table.add_row(
            entry.at.isoformat()[:19],
            entry.actor,
            entry.action,
            str(entry.count),
            json.dumps(entry.filters),
        )
    Console().print(table)
