"""Operators' controls over running workers, on both brokers: pausing a queue fleet-wide
(``conveyor queues pause``/``resume``) and changing a worker (``conveyor scale apply``).

Real `conveyor worker` processes, the real brokers and a ledger database of this module's
own; the controls are used the way an operator would, through the command line.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import enqueue
from conveyor.worker.errors import UsageError
from conveyor.worker.models import JobState
from conveyor.worker.operations.scale import apply, fleet, plan
from tests.conftest import (
    Processes,
    conveyor_env,
    counter_value,
    effects_per_job,
    new_counter,
    run_cli,
    state_of,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def control_env(broker_url: str, own_ledger_url: str, tmp_path: Path) -> dict[str, str]:
    return conveyor_env(broker_url, own_ledger_url, tmp_path)


def start(processes: Processes, env: dict[str, str], *args: str) -> str:
    """Start `conveyor worker ARGS` under a node name of its own; returns the name."""
    node = f"w-{uuid.uuid4().hex[:8]}@control"
    processes.start(env, "worker", *args, "-n", node, "--loglevel", "INFO")
    return node


def consumed(app: ConveyorApp, node: str) -> set[str] | None:
    """The queues `node` consumes now, or None while it does not answer."""
    active = app.control.inspect([node], timeout=1).active_queues()
    if not active or node not in active:
        return None
    return {entry["name"] for entry in active[node]}


def pool_size(app: ConveyorApp, node: str) -> int | None:
    stats = app.control.inspect([node], timeout=1).stats() or {}
    if node not in stats:
        return None
    return len(stats[node]["pool"]["processes"])


def cli_json(*args: str, env: dict[str, str]) -> Any:
    result = run_cli(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_paused_queue_runs_nothing_on_any_worker_until_resumed(
    control_env: dict[str, str],
    producer: ConveyorApp,
    processes: Processes,
    own_queues: list[str],
) -> None:
    paused, other = own_queues
    first = start(processes, control_env, "-Q", f"{paused},{other}", "-c", "2")
    wait_for(lambda: consumed(producer, first) == {paused, other}, timeout_s=60)

    result = run_cli("queues", "pause", paused, "--reason", "deploy", env=control_env)
    assert result.returncode == 0, result.stderr
    assert f"paused {paused}" in result.stdout
    # A worker started after the pause does not consume it either (it starts up meanwhile).
    second = start(processes, control_env, "-Q", paused, "-c", "2")
    again = run_cli("queues", "pause", paused, env=control_env)
    assert "paused already" in again.stdout
    # The running worker lets go of the paused queue and keeps the other one.
    wait_for(lambda: consumed(producer, first) == {other}, timeout_s=30)
    wait_for(lambda: consumed(producer, second) == set(), timeout_s=60)

    name = new_counter(producer)
    held = [enqueue("test.count", {"counter": name}, queue=paused, app=producer) for _ in range(20)]
    ran = enqueue("test.count", {"counter": new_counter(producer)}, queue=other, app=producer)
    # The other queue still runs (proof that the workers are alive and consuming) ...
    wait_for(lambda: state_of(producer, ran) == JobState.SUCCEEDED, timeout_s=60)
    ran_at = time.monotonic()
    listed = {q["name"]: q for q in cli_json("queues", env=control_env)["queues"]}
    # Two more polls of the pauses by each worker (the command above took most of them) ...
    time.sleep(max(0.0, ran_at + 2.0 - time.monotonic()))
    # ... while every job of the paused queue waits, unstarted.
    states = {state_of(producer, job_id) for job_id in held}
    assert states == {JobState.QUEUED}
    assert counter_value(producer, name) == 0
    assert listed[paused]["paused"] is True
    assert listed[paused]["depth"] == 20
    assert other not in listed  # nothing of it waits: it is listed only when paused

    result = run_cli("queues", "resume", paused, env=control_env)
    assert result.returncode == 0, result.stderr
    assert f"resumed {paused}" in result.stdout
    with ThreadPoolExecutor(1) as pool:  # the audit is read while the jobs run
        auditing = pool.submit(cli_json, "dlq", "audit", env=control_env)
        wait_for(
            lambda: all(state_of(producer, j) == JobState.SUCCEEDED for j in held),
            timeout_s=120,
        )
        audit = auditing.result()
    # Each ran exactly once: one effect per job, the counter at 20, one attempt each.
    assert counter_value(producer, name) == 20
    assert effects_per_job(producer, held) == dict.fromkeys(held, 1)
    assert {getattr(producer.ledger.get(j), "attempts", None) for j in held} == {1}
    # Both consume it again (each within a poll of the resume).
    wait_for(lambda: consumed(producer, first) == {paused, other}, timeout_s=30)
    wait_for(lambda: consumed(producer, second) == {paused}, timeout_s=30)
    actions = [(e["action"], e["filters"].get("queue")) for e in audit]
    assert ("pause", paused) in actions
    assert ("resume", paused) in actions


def test_pause_and_resume_refuse_bad_names_and_say_what_they_did(
    control_env: dict[str, str], own_queues: list[str]
) -> None:
    name = own_queues[0]
    assert "was not paused" in run_cli("queues", "resume", name, env=control_env).stdout
    too_long = run_cli("queues", "pause", "q" * 201, env=control_env)
    assert too_long.returncode == 2
    assert "1 to 200 characters" in too_long.stderr
    assert run_cli("queues", "pause", name, env=control_env).returncode == 0
    assert run_cli("queues", "resume", name, env=control_env).returncode == 0
    listed = cli_json("queues", env=control_env)["queues"]
    assert name not in {q["name"] for q in listed}


def scale_apply(env: dict[str, str], node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("scale", "apply", "--worker", node, *args, env=env)


def test_scale_apply_grows_shrinks_and_adds_a_queue_to_a_running_worker(
    control_env: dict[str, str],
    producer: ConveyorApp,
    processes: Processes,
    own_queues: list[str],
) -> None:
    queue, extra = own_queues
    node = start(processes, control_env, "-Q", queue, "-c", "1")
    wait_for(lambda: pool_size(producer, node) == 1, timeout_s=60)

    # The report and a dry run side by side: neither changes anything.
    with ThreadPoolExecutor(2) as pool:
        reporting = pool.submit(cli_json, "scale", env=control_env)
        dry = pool.submit(scale_apply, control_env, node, "--grow", "2", "--dry-run").result()
        dry_at = time.monotonic()
        report = reporting.result()
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout
    (me,) = [w for w in report["workers"] if w["name"] == node]
    assert me == {
        "name": node,
        "pool": "prefork",
        "processes": 1,
        "queues": [queue],
        "autoscale": None,
    }
    assert {q["name"] for q in report["queues"]} >= {queue}
    time.sleep(max(0.0, dry_at + 1.0 - time.monotonic()))
    assert pool_size(producer, node) == 1

    # Two changes at once, each to what the other leaves alone: the pool, the queues.
    with ThreadPoolExecutor(2) as pool:
        growing = pool.submit(scale_apply, control_env, node, "--grow", "2")
        adding = pool.submit(scale_apply, control_env, node, "--add-queue", extra, "--json")
        grown, added = growing.result(), adding.result()
    assert grown.returncode == 0, grown.stderr
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["command"] == "add_consumer"
    wait_for(lambda: pool_size(producer, node) == 3, timeout_s=30)
    wait_for(lambda: consumed(producer, node) == {queue, extra}, timeout_s=30)
    # The same commands in-process, as `scale apply` runs them: the fleet asked of the one
    # worker (which answers at once; the whole fleet is waited for a full second, twice).
    workers = fleet(producer, only=node)
    answer = apply(producer, plan(producer.settings, workers, worker=node, shrink=1))
    assert "shrink" in answer
    wait_for(lambda: pool_size(producer, node) == 2, timeout_s=30)
    job_id = enqueue("test.sleep", {"s": 0}, queue=extra, app=producer)
    wait_for(lambda: state_of(producer, job_id) == JobState.SUCCEEDED, timeout_s=60)

    apply(
        producer,
        plan(producer.settings, fleet(producer, only=node), worker=node, cancel_queue=extra),
    )
    wait_for(lambda: consumed(producer, node) == {queue}, timeout_s=30)


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)  # remote control alike
def test_scale_apply_refuses_what_a_worker_cannot_do(
    control_env: dict[str, str],
    producer: ConveyorApp,
    processes: Processes,
    own_queues: list[str],
) -> None:
    queue = own_queues[0]
    solo = start(processes, control_env, "-Q", queue, "--pool", "solo")
    prefork = start(processes, control_env, "-Q", queue, "-c", "1")
    wait_for(lambda: pool_size(producer, prefork) == 1, timeout_s=60)
    wait_for(lambda: consumed(producer, solo) == {queue}, timeout_s=60)

    workers = fleet(producer)
    cases: list[tuple[str, dict[str, Any], str]] = [
        (solo, {"grow": 1}, "solo pool, which cannot grow or shrink"),
        (prefork, {"shrink": 1}, "it can shrink by at most 0"),
        (prefork, {"autoscale": (4, 1)}, "was not started with --autoscale"),
        (prefork, {"add_queue": queue}, "consumes .* already"),
        (prefork, {"cancel_queue": queue}, "is the only queue"),
        (prefork, {"cancel_queue": "elsewhere"}, "does not consume 'elsewhere'"),
        ("nobody@nowhere", {"grow": 1}, "no worker named 'nobody@nowhere' answered"),
        (prefork, {"grow": 1, "shrink": 1}, "exactly one of"),
    ]
    for node, asked, message in cases:
        with pytest.raises(UsageError, match=message):
            plan(producer.settings, workers, worker=node, **asked)
    # From the command line: one line on stderr, exit 1, and nothing changed.
    result = scale_apply(control_env, solo, "--grow", "1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"conveyor: error: {solo} runs the solo pool, which cannot grow or shrink: "
        "start more workers instead (or run it with --pool prefork)"
    ]
    assert pool_size(producer, prefork) == 1
