"""``conveyor enqueue``: put one job on its queue from the command line."""

from __future__ import annotations

import json

import click

from conveyor.worker.cli.common import State, emit_json, json_option, pass_state
from conveyor.worker.errors import UsageError


@click.command()
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
