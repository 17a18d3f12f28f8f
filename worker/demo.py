"""``conveyor demo``: a worker, a mix of jobs, live progress and a summary from the ledger.

The mix is seeded: most jobs succeed at once, some fail once or twice and then succeed,
and some can never succeed (they are dead-lettered, exhausted or fatal). The demo starts
a real worker and a real relay (which publishes the retries when they are due). The demo uses
a queue of its own, so it never takes or leaves work on a shared broker's real queues.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from sqlalchemy import select

from conveyor.config import Settings
from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import enqueue
from conveyor.worker.constants import DeadReason
from conveyor.worker.models import TERMINAL_STATES, Job, JobState

STOP_TIMEOUT_S = 20.0


def job_mix(count: int, seed: int) -> list[dict[str, Any]]:
    """Payloads for ``demo.work``: ~70% succeed, ~20% flaky, ~5% exhausted, ~5% fatal."""
    rng = random.Random(seed)
    payloads = []
    for n in range(count):
        roll = rng.random()
        payload: dict[str, Any] = {"n": n, "work_ms": rng.randint(5, 60)}
        if roll < 0.05:
            payload["fatal"] = True
        elif roll < 0.10:
            payload["always_fail"] = True
        elif roll < 0.30:
            payload["fail_times"] = rng.randint(1, 2)
        payloads.append(payload)
    return payloads


DEMO_JOBS = "conveyor.tasks.demo"


def with_demo_jobs(modules: str | None) -> str:
    """``CONVEYOR_TASK_MODULES`` with the demo's job module added (once)."""
    names = [name.strip() for name in (modules or "").split(",") if name.strip()]
    return ",".join(dict.fromkeys([*names, DEMO_JOBS]))


def start(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """A real ``conveyor ARGS`` process with this process's settings, logging to ``log_path``
    so that the live table stays readable."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "conveyor.worker.cli", *args],
            env=dict(os.environ),
            stdout=log_file,
            stderr=log_file,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (SIGTERM lets running jobs finish); kill only if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def delete_queue(app: ConveyorApp, queue: str) -> None:
    """Remove the demo's own queue from the broker, only if it is empty (nothing is lost)."""
    with app.connection_for_write() as connection:
        connection.default_channel.queue_delete(queue, if_empty=True)


def progress_table(counts: dict[str, int], total: int, elapsed_s: float) -> Table:
    table = Table(title=f"conveyor demo: {total} jobs, {elapsed_s:4.1f}s")
    for state in JobState:
        table.add_column(state.value, justify="right")
    table.add_row(*(str(counts.get(state.value, 0)) for state in JobState))
    return table


def run_demo(
    settings: Settings,
    *,
    app: ConveyorApp,
    count: int,
    concurrency: int,
    timeout_s: float,
    seed: int,
    console: Console,
) -> dict[str, Any]:
    """Run the demo and return its summary (also printed as a table on ``console``)."""
    queue = f"demo-{uuid.uuid4().hex[:8]}"
    console.print(f"broker: {settings.broker_kind.value}, ledger: {app.ledger.engine.dialect.name}")
    log_path = settings.data_dir / "demo.log"
    console.print(f"worker and relay log: {log_path}")
    worker = start(
        ["worker", "-Q", queue, "-c", str(concurrency), "--loglevel", "WARNING"], log_path
    )
    relay = start(["relay"], log_path)
    started = time.monotonic()
    try:
        ids = [enqueue("demo.work", p, queue=queue, app=app) for p in job_mix(count, seed)]
        counts: dict[str, int] = {}
        with Live(console=console, refresh_per_second=8, transient=False) as live:
            while time.monotonic() - started < timeout_s:
                counts = app.ledger.count_by_state(ids=ids)
                live.update(progress_table(counts, count, time.monotonic() - started))
                if sum(counts.get(s.value, 0) for s in TERMINAL_STATES) == count:
                    break
                if worker.poll() is not None or relay.poll() is not None:
                    console.print("[red]the worker or the relay exited early; see the log[/red]")
                    break
                time.sleep(0.25)
        elapsed_s = time.monotonic() - started
    finally:
        stop(worker)
        stop(relay)
    summary = summarise(app, ids, elapsed_s)
    if not summary["unfinished"]:
        delete_queue(app, queue)
    summary["worker_exit_code"] = worker.returncode
    summary["relay_exit_code"] = relay.returncode
    console.print(summary_table(summary))
    return summary


def summarise(app: ConveyorApp, ids: list[str], elapsed_s: float) -> dict[str, Any]:
    """The demo's outcome, computed from the ledger rows of its jobs."""
    with app.ledger.session() as session:
        jobs = session.scalars(select(Job).where(Job.id.in_(ids))).all()
    done = [j for j in jobs if j.finished_at is not None]
    latencies = sorted((j.finished_at - j.created_at).total_seconds() for j in done)  # type: ignore[operator]
    succeeded = [j for j in jobs if j.state == JobState.SUCCEEDED]
    dead = [j for j in jobs if j.state == JobState.DEAD]
    return {
        "jobs": len(ids),
        "succeeded": len(succeeded),
        "succeeded_first_try": sum(1 for j in succeeded if j.attempts == 1),
        "retried_then_succeeded": sum(1 for j in succeeded if j.attempts > 1),
        "dead_lettered": len(dead),
        "dead_exhausted": sum(1 for j in dead if j.dead_reason == DeadReason.EXHAUSTED),
        "dead_fatal": sum(1 for j in dead if j.dead_reason == DeadReason.FATAL),
        "unfinished": len(ids) - len(done),
        "attempts": sum(j.attempts for j in jobs),
        "elapsed_s": round(elapsed_s, 2),
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3) if latencies else None,
        "max_s": round(latencies[-1], 3) if latencies else None,
    }


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table("outcome", "jobs", title="summary (from the ledger)")
    table.add_row("succeeded", str(summary["succeeded"]))
    table.add_row("  first try", str(summary["succeeded_first_try"]))
    table.add_row("  after retries", str(summary["retried_then_succeeded"]))
    table.add_row("dead-lettered", str(summary["dead_lettered"]))
    table.add_row("  retries exhausted", str(summary["dead_exhausted"]))
    table.add_row("  fatal error", str(summary["dead_fatal"]))
    table.add_row("unfinished", str(summary["unfinished"]))
    table.add_section()
    table.add_row("attempts in all", str(summary["attempts"]))
    table.add_row("wall time (s)", f"{summary['elapsed_s']:.2f}")
    for key, label in (("p50_s", "p50"), ("p95_s", "p95"), ("max_s", "max")):
        if summary[key] is not None:
            table.add_row(f"enqueue to done {label} (s)", f"{summary[key]:.3f}")
    return table
