"""``conveyor enqueue``: put one job on its queue, or a file of them, from the command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

import click

from conveyor.worker.cli.common import EXIT_ERROR, State, emit_json, json_option, pass_state
from conveyor.worker.errors import UsageError

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

    from conveyor.worker.client import JobRequest

BATCH_SIZE = 500
"""Jobs per :func:`~worker.client.enqueue_many` call when reading a file."""


@click.command()
@click.argument("task", required=False)
@click.argument("payload", default="{}")
@click.option("--key", "idempotency_key", help="Idempotency key: enqueue at most once per key.")
@click.option("--queue", help="Queue to use instead of the job's own.")
@click.option("--delay", type=click.FloatRange(0), help="Seconds to wait before running.")
@click.option(
    "--priority",
    type=click.IntRange(0, 9),
    help="Priority, 0 to 9, 9 first (on queues declared with priorities).",
)
@click.option(
    "--expires-in",
    "expires_in",
    type=click.FloatRange(0, min_open=True),
    help="Deadline in seconds: not started by then, the job is cancelled (expired) unrun.",
)
@click.option(
    "--from-file",
    "from_file",
    type=click.File("r", encoding="utf-8"),
    help="Enqueue every job of this JSON Lines file ('-' reads stdin) instead of TASK.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 5000),
    default=BATCH_SIZE,
    show_default=True,
    help="With --from-file: jobs written and published together.",
)
@json_option
@pass_state
def enqueue(
    state: State,
    task: str | None,
    payload: str,
    idempotency_key: str | None,
    queue: str | None,
    delay: float | None,
    priority: int | None,
    expires_in: float | None,
    from_file: IO[str] | None,
    batch_size: int,
    as_json: bool,
) -> None:
    """Enqueue TASK with PAYLOAD (a JSON object), or each job of --from-file.

    Prints the job id (with --from-file, a count of enqueued and refused jobs).

    With --from-file, each line of the file is one job, a JSON object with "task" and
    "payload" and, if wanted, "idempotency_key", "queue", "delay_s", "priority",
    "expires_in_s" and "expires_at" (the body of POST /v1/jobs). A line that cannot be
    enqueued is reported on stderr with its number and does not stop the others; the
    exit status is then 1.
    """
    if from_file is not None:
        if task is not None:
            raise UsageError("give either TASK or --from-file, not both")
        if expires_in is not None:
            raise UsageError("--expires-in applies to TASK: give expires_in_s on each line")
        _enqueue_file(state, from_file, batch_size=batch_size, as_json=as_json)
        return
    if task is None:
        raise UsageError("missing TASK (or --from-file)")
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
        expires_in=expires_in,
        app=state.app,
    )
    if as_json:
        emit_json({"id": job_id})
    else:
        click.echo(job_id)


def _enqueue_file(state: State, source: IO[str], *, batch_size: int, as_json: bool) -> None:
    """Enqueue the file's jobs ``batch_size`` at a time, with a progress bar on stderr."""
    from conveyor.worker.client import enqueue_many

    app = state.app
    outcomes: list[dict[str, Any]] = []
    progress: ProgressBar[str] = click.progressbar(
        source, length=_count_lines(source), label="enqueueing", file=sys.stderr, show_pos=True
    )
    with progress as lines:
        for batch in _batches(lines, batch_size):
            requests = [request for _, request in batch if not isinstance(request, str)]
            results = iter(enqueue_many(requests, app=app))
            for line, request in batch:
                job_id: str | None
                error: str | None
                if isinstance(request, str):  # not a job at all
                    job_id, error = None, request
                else:
                    result = next(results)
                    job_id, error = result.id, None if result.error is None else str(result.error)
                if error is not None and not as_json:
                    click.echo(f"line {line}: {error}", err=True)
                outcomes.append({"line": line, "id": job_id, "error": error})
    refused = sum(1 for outcome in outcomes if outcome["error"] is not None)
    accepted = len(outcomes) - refused
    if as_json:
        emit_json({"accepted": accepted, "refused": refused, "jobs": outcomes})
    else:
        click.echo(f"{accepted} enqueued, {refused} refused")
    if refused:
        sys.exit(EXIT_ERROR)


def _count_lines(source: IO[str]) -> int | None:
    """The file's number of lines for the progress bar (None for a pipe: unknown)."""
    if not source.seekable():
        return None
    count = sum(1 for _ in source)
    source.seek(0)
    return count


def _batches(source: Iterable[str], size: int) -> Iterator[list[tuple[int, JobRequest | str]]]:
    """``(line number, request or the reason it is none)`` for each non-blank line."""
    batch: list[tuple[int, JobRequest | str]] = []
    for number, text in enumerate(source, 1):
        if not text.strip():
            continue
        batch.append((number, _request(text)))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _request(text: str) -> JobRequest | str:
    """The line's job, or why it is not one: the rules of a job of ``POST /v1/jobs:batch``."""
    from pydantic import ValidationError

    from conveyor.worker.api.schemas import BatchJob

    try:
        return BatchJob.model_validate_json(text).request()
    except ValidationError as exc:
        return "; ".join(_reason(error["loc"], error["msg"]) for error in exc.errors())


def _reason(where: tuple[int | str, ...], why: str) -> str:
    field = ".".join(str(part) for part in where)
    return f"{field}: {why}" if field else why
