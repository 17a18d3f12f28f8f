"""``ctx.progress``: a running job's progress reaches the ledger at once, throttled.

The job below is defined here; the test's worker imports this module next to
``tests.jobs`` (``CONVEYOR_TASK_MODULES``). On Redis only: progress never touches the
broker.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from conveyor import JobContext, job
from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import enqueue, get_job
from conveyor.worker.jobs import PROGRESS_EVERY_S
from conveyor.worker.ledger.statements import PROGRESS_NOTE_CHARS
from conveyor.worker.models import JobState
from tests import jobs as test_jobs
from tests.conftest import (
    WorkerFactory,
    conveyor_env,
    counter_value,
    new_counter,
    run_cli,
    terminal,
    wait_for,
)

pytestmark = pytest.mark.integration

STEPS = 30
STEP_S = 0.05
LONG_NOTE = "x" * 250


@job(name="test.progress", max_attempts=1)
def report_progress(ctx: JobContext, payload: dict[str, Any]) -> dict[str, int]:
    """Add 1 to a counter through ``ctx.session`` (its transaction stays open), then report
    ``steps`` steps of progress ``step_s`` apart; returns how many reports were written."""
    ctx.session.execute(
        update(test_jobs.counters)
        .where(test_jobs.counters.c.name == payload["counter"])
        .values(value=test_jobs.counters.c.value + 1)
    )
    steps, writes = payload["steps"], 0
    for done in range(1, steps + 1):
        time.sleep(payload["step_s"])
        note = f"step {done}" + (payload["last_note"] if done == steps else "")
        writes += ctx.progress(done, steps, note=note)
    return {"writes": writes}


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_a_job_reports_progress_while_it_runs_and_the_ledger_keeps_the_last(
    app: ConveyorApp,
    broker_url: str,
    pg_url: str,
    tmp_path: Path,
    queue: str,
    start_worker: WorkerFactory,
) -> None:
    env = conveyor_env(
        broker_url, pg_url, tmp_path, task_modules=f"{test_jobs.__name__},{__name__}"
    )
    start_worker(env, queue, concurrency=1)
    counter = new_counter(app)
    payload = {"counter": counter, "steps": STEPS, "step_s": STEP_S, "last_note": LONG_NOTE}
    job_id = enqueue("test.progress", payload, queue=queue, app=app)

    def midway() -> tuple[int, int] | None:
        row = get_job(job_id, app=app)
        done, total = row.progress_done, row.progress_total
        if row.state == JobState.RUNNING and done is not None and total is not None:
            return (done, total) if 0 < done < STEPS else None
        return None

    # Seen while the job's own transaction is still open: written outside it.
    assert wait_for(midway, timeout_s=60, every_s=0.02)[1] == STEPS
    assert counter_value(app, counter) == 0  # the job's own write is not committed yet

    assert wait_for(lambda: terminal(app, job_id), timeout_s=60) == JobState.SUCCEEDED
    row = get_job(job_id, app=app)
    assert (row.progress_done, row.progress_total) == (STEPS, STEPS)
    assert row.progress_note == (f"step {STEPS}" + LONG_NOTE)[:PROGRESS_NOTE_CHARS]
    assert row.progress_at is not None
    assert row.started_at is not None
    assert row.finished_at is not None
    assert row.started_at <= row.progress_at <= row.finished_at
    assert counter_value(app, counter) == 1

    # Throttled: one write at the start, at most one per PROGRESS_EVERY_S, and the last.
    assert isinstance(row.result, dict)
    writes = row.result["writes"]
    run_s = STEPS * STEP_S
    assert 2 <= writes <= run_s / PROGRESS_EVERY_S + 2
    assert writes < STEPS

    shown = run_cli("jobs", "show", job_id, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    progress = json.loads(shown.stdout)["progress"]
    assert (progress["done"], progress["total"]) == (STEPS, STEPS)
    assert progress["note"] == row.progress_note
    assert progress["at"] == row.progress_at.isoformat()
