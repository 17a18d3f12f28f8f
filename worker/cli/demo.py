"""``conveyor demo``: a worker and a mix of jobs, to see the platform work in a minute."""

from __future__ import annotations

import os

import click
from rich.console import Console

from conveyor.worker.cli.common import State, emit_json, fail, json_option, pass_state


@click.command()
@click.option("--jobs", "count", type=click.IntRange(1, 10_000), default=40, show_default=True)
@click.option("-c", "--concurrency", type=click.IntRange(1, 32), default=2, show_default=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(5), default=120, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@json_option
@pass_state
def demo(
    state: State, count: int, concurrency: int, timeout_s: float, seed: int, as_json: bool
) -> None:
    """Start a worker, run a mix of jobs through it and summarise what happened."""
    from conveyor.worker.demo import run_demo, with_demo_jobs

    # Before the settings are read: this process and the worker it starts load the demo jobs.
    os.environ["CONVEYOR_TASK_MODULES"] = with_demo_jobs(os.environ.get("CONVEYOR_TASK_MODULES"))

    summary = run_demo(
        state.settings,
        app=state.app,
        count=count,
        concurrency=concurrency,
        timeout_s=timeout_s,
        seed=seed,
        console=Console(stderr=as_json),
    )
    if as_json:
        emit_json(summary)
    if summary["unfinished"]:
        fail(f"{summary['unfinished']} of {count} jobs did not finish within {timeout_s:g}s")
