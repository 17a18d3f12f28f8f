"""Queues declared in ``CONVEYOR_QUEUES``, on both brokers: priorities with one meaning
everywhere, a prefetch per queue class, quorum queues on RabbitMQ, and two queue classes
that do not hold each other up.

Real workers, real brokers, a ledger database of this module's own.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from pathlib import Path

import httpx
import pytest

from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import JobRequest, enqueue, enqueue_many
from conveyor.worker.models import JobState
from tests.conftest import (
    MANAGEMENT_API_URL,
    Processes,
    conveyor_env,
    producer_app,
    state_of,
    wait_for,
)

pytestmark = pytest.mark.integration


def start(processes: Processes, env: dict[str, str], *args: str) -> str:
    node = f"w-{uuid.uuid4().hex[:8]}@classes"
    processes.start(env, "worker", *args, "-n", node, "--loglevel", "INFO")
    return node


def started_at(app: ConveyorApp, job_id: str) -> float:
    job = app.ledger.get(job_id)
    assert job is not None
    assert job.started_at is not None
    return job.started_at.timestamp()


def test_jobs_start_in_priority_order_on_both_brokers(
    broker_url: str,
    own_ledger_url: str,
    tmp_path: Path,
    processes: Processes,
    own_queues: list[str],
) -> None:
    queue = own_queues[0]
    declared = json.dumps({queue: {"priority": True, "prefetch": 1}})
    env = conveyor_env(broker_url, own_ledger_url, tmp_path, queues=declared)
    app = producer_app(broker_url, own_ledger_url, tmp_path, queues=json.loads(declared))
    try:
        node = start(processes, env, "-Q", queue, "-c", "1")
        wait_for(lambda: app.control.ping([node], timeout=1), timeout_s=60)
        # One job keeps the only process busy while the rest queue up behind it.
        blocker = enqueue("test.sleep", {"s": 2}, queue=queue, app=app)
        wait_for(lambda: state_of(app, blocker) == JobState.RUNNING, timeout_s=60)
        priorities = [3, None, 9, 0, 7, 5, 9, 1]
        made = enqueue_many(
            [JobRequest("test.sleep", {"s": 0}, queue=queue, priority=p) for p in priorities],
            app=app,
        )
        ids = [item.id for item in made if item.id is not None]
        wait_for(lambda: all(state_of(app, i) == JobState.SUCCEEDED for i in ids), timeout_s=60)

        order = sorted(zip(ids, priorities, strict=True), key=lambda pair: started_at(app, pair[0]))
        # Highest first; no priority counts as 0; equal priorities in the order enqueued.
        assert [p for _, p in order] == [9, 9, 7, 5, 3, 1, None, 0]
        stored = {item.id: p for item, p in zip(made, priorities, strict=True)}
        assert {i: getattr(app.ledger.get(i), "priority", None) for i in ids} == stored
    finally:
        app.ledger.dispose()
        app.close()


def test_each_queue_class_gets_its_prefetch(
    broker_url: str,
    own_ledger_url: str,
    tmp_path: Path,
    processes: Processes,
    own_queues: list[str],
) -> None:
    short, long = own_queues
    declared = json.dumps({short: {"prefetch": 4}, long: {"prefetch": 1}})
    env = conveyor_env(broker_url, own_ledger_url, tmp_path, queues=declared)
    app = producer_app(broker_url, own_ledger_url, tmp_path, queues=json.loads(declared))
    try:
        nodes = {
            "short": start(processes, env, "-Q", short, "-c", "2"),
            "long": start(processes, env, "-Q", long, "-c", "2"),
            "both": start(processes, env, "-Q", f"{short},{long}", "-c", "2"),
        }

        def prefetch_counts() -> dict[str, int] | None:
            stats = app.control.inspect(list(nodes.values()), timeout=1).stats() or {}
            if len(stats) < len(nodes):
                return None
            return {role: stats[node]["prefetch_count"] for role, node in nodes.items()}

        # Prefetch per process times processes; a worker on both classes takes the smaller.
        assert wait_for(prefetch_counts, timeout_s=60) == {"short": 8, "long": 2, "both": 2}
    finally:
        app.ledger.dispose()
        app.close()


def test_a_flood_of_slow_jobs_on_one_queue_class_does_not_hold_up_the_other(
    broker_url: str,
    own_ledger_url: str,
    tmp_path: Path,
    processes: Processes,
    own_queues: list[str],
) -> None:
    """Enqueue-to-start latency of fast jobs, as a ratio to the same jobs on idle workers:
    with a worker per queue class a flood of slow jobs leaves it near 1; with one worker
    for both (the control, which must show the problem) the fast jobs wait behind them."""
    fast, slow = own_queues
    declared = json.dumps({fast: {"prefetch": 4}, slow: {"prefetch": 1}})
    env = conveyor_env(broker_url, own_ledger_url, tmp_path, queues=declared)
    app = producer_app(broker_url, own_ledger_url, tmp_path, queues=json.loads(declared))

    def fast_latency_s() -> float:
        waits = []
        for _ in range(5):
            job_id = enqueue("test.sleep", {"s": 0}, queue=fast, app=app)
            wait_for(lambda: state_of(app, job_id) == JobState.SUCCEEDED, timeout_s=120)  # noqa: B023
            job = app.ledger.get(job_id)
            assert job is not None
            assert job.started_at is not None
            waits.append((job.started_at - job.created_at).total_seconds())
            time.sleep(0.05)
        return statistics.median(waits)

    def flood() -> list[str]:
        made = enqueue_many([JobRequest("test.sleep", {"s": 2}, queue=slow)] * 30, app=app)
        return [item.id for item in made if item.id is not None]

    try:
        isolated = [
            start(processes, env, "-Q", fast, "-c", "2"),
            start(processes, env, "-Q", slow, "-c", "2"),
        ]
        wait_for(lambda: len(app.control.ping(isolated, timeout=1)) == 2, timeout_s=60)
        unloaded_raw_s = fast_latency_s()
        unloaded_s = max(unloaded_raw_s, 0.02)  # a floor: below 20 ms it is noise
        flooded = flood()
        wait_for(lambda: state_of(app, flooded[0]) == JobState.RUNNING, timeout_s=60)
        isolated_s = fast_latency_s()
        isolated_ratio = isolated_s / unloaded_s
        processes.stop_all()

        # The control: one worker for both classes (prefetch 1), the slow backlog in front.
        shared = start(processes, env, "-Q", f"{fast},{slow}", "-c", "2")
        wait_for(lambda: app.control.ping([shared], timeout=1), timeout_s=60)
        shared_s = fast_latency_s()
        shared_ratio = shared_s / unloaded_s
    finally:
        app.ledger.dispose()
        app.close()
    report = {
        "fast_job_median_wait_s": {
            "unloaded": round(unloaded_raw_s, 4),
            "isolated_under_flood": round(isolated_s, 4),
            "shared_worker_under_flood": round(shared_s, 4),
        },
        "ratio_to_unloaded (floor 20 ms)": {
            "isolated": round(isolated_ratio, 2),
            "shared": round(shared_ratio, 2),
        },
    }
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    broker = "redis" if broker_url.startswith("redis") else "rabbitmq"
    (artifacts / f"isolation-{broker}.json").write_text(json.dumps(report, indent=2))
    assert isolated_ratio < 4, report
    assert shared_ratio > 8, report


def test_declared_queues_take_their_type_and_priority_on_rabbitmq(
    vhost_url: str, own_ledger_url: str, tmp_path: Path, processes: Processes
) -> None:
    quorum, prioritized = "jobs-quorum", "jobs-priority"
    declared = json.dumps({quorum: {"type": "quorum"}, prioritized: {"priority": True}})
    env = conveyor_env(vhost_url, own_ledger_url, tmp_path, queues=declared)
    app = producer_app(vhost_url, own_ledger_url, tmp_path, queues=json.loads(declared))
    try:
        node = start(processes, env, "-Q", f"{quorum},{prioritized}", "-c", "1")
        wait_for(lambda: app.control.ping([node], timeout=1), timeout_s=60)
        ids = [
            enqueue("test.sleep", {"s": 0}, queue=quorum, app=app),
            enqueue("test.sleep", {"s": 0}, queue=prioritized, priority=9, app=app),
        ]
        wait_for(lambda: all(state_of(app, i) == JobState.SUCCEEDED for i in ids), timeout_s=60)
        vhost = vhost_url.rsplit("/", 1)[1]
        listed = httpx.get(f"{MANAGEMENT_API_URL}queues/{vhost}", timeout=10).json()
        by_name = {queue["name"]: queue for queue in listed}
        assert by_name[quorum]["type"] == "quorum"
        assert by_name[prioritized]["type"] == "classic"
        assert by_name[prioritized]["arguments"] == {"x-max-priority": 9}
    finally:
        app.ledger.dispose()
        app.close()
