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
FIELDS = {"task", "payload", "idempotency_key", "queue", "delay_s", "priority"}


@click.command()
@click.argument("task", required=False)
@click.argument("payload", default="{}")
@click.option("--key", "idempotency_key", help="Idempotency key: enqueue at most once per key.")
@click.option("--queue", help="Queue to use instead of the job's own.")
@click.option("--delay", type=click.FloatRange(0), help="Seconds to wait before running.")
@click.option("--priority", type=click.IntRange(0, 9), help="Priority, 0 to 9.")
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
    from_file: IO[str] | None,
    batch_size: int,
    as_json: bool,
) -> None:
    """Enqueue TASK with PAYLOAD (a JSON object), or each job of --from-file.

    Prints the job id (with --from-file, a count of enqueued and refused jobs).

    With --from-file, each line of the file is one job, a JSON object with "task" and
    "payload" and, if wanted, "idempotency_key", "queue", "delay_s" and "priority" (the
    body of POST /v1/jobs). A line that cannot be enqueued is reported on stderr with its
    number and does not stop the others; the exit status is then 1.
    """
    if from_file is not None:
        if task is not None:
            raise UsageError("give either TASK or --from-file, not both")
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
    accepted = refused = 0
    progress: ProgressBar[str] = click.progressbar(
        source, length=_count_lines(source), label="enqueueing", file=sys.stderr, show_pos=True
    )
    with progress as lines:
        for batch in _batches(lines, batch_size):
            requests = [request for _, request in batch if not isinstance(request, str)]
            results = iter(enqueue_many(requests, app=app))
            for line, request in batch:
                error = request if isinstance(request, str) else None
                job_id = None
                if error is None:
                    result = next(results)
                    job_id = result.id
                    error = str(result.error) if result.error is not None else None
                if error is None:
                    accepted += 1
                else:
                    refused += 1
                    if not as_json:
                        click.echo(f"line {line}: {error}", err=True)
                outcomes.append({"line": line, "id": job_id, "error": error})
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
    """The line's job, or why it is not one."""
    from conveyor.worker.client import JobRequest

    try:
        job = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc}"
    if not isinstance(job, dict):
        return "a job is a JSON object"
    unknown = sorted(set(job) - FIELDS)
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; a job has {', '.join(sorted(FIELDS))}"
    task, payload = job.get("task"), job.get("payload", {})
    if not isinstance(task, str) or not task:
        return '"task" must be a job name'
    checks = (
        (job.get("idempotency_key"), str, '"idempotency_key" must be a string'),
        (job.get("queue"), str, '"queue" must be a string'),
        (job.get("delay_s"), (int, float), '"delay_s" must be a number of seconds'),
        (job.get("priority"), int, '"priority" must be an integer from 0 to 9'),
    )
    for value, kind, problem in checks:
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return problem
    return JobRequest(
        task,
        payload,
        idempotency_key=job.get("idempotency_key"),
        queue=job.get("queue"),
        delay=job.get("delay_s"),
        priority=job.get("priority"),
    )
