"""Workers alone keep P1: the relay's duty runs in them, under one elected leader.

No `conveyor relay` runs here. Two real workers share a ledger of this module's own
(another module's jobs must not reach this module's relay, nor its jobs theirs), with
``CONVEYOR_RELAY_IN_WORKERS`` at its default (on). The leader is SIGKILLed with its pool,
as a crash or an OOM kill would: the other worker takes the duty over, recovers the killed
worker's job, publishes due retries, and every delayed job is published exactly once.
Takeover and recovery times go to test-artifacts/recovery.jsonl as figures.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import enqueue, get_job
from conveyor.worker.leader import RELAY_LEASE
from tests.conftest import (
    ROOT,
    SHORT_LEASE_S,
    ProcessFactory,
    WorkerFactory,
    conveyor_env,
    drain_ids,
    kill_group,
    state_of,
    wait_for,
)

pytestmark = pytest.mark.integration

DELAYED = 30


def leader_pid(app: ConveyorApp) -> int | None:
    """The pid of the process holding an unexpired relay lease (holder ``node:pid:tag``)."""
    lease = app.ledger.lease(RELAY_LEASE)
    if lease is None or lease.expires_at.timestamp() < time.time():
        return None
    return int(lease.holder.rsplit(":", 2)[1])


def record(figure: dict[str, object]) -> None:
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    with (ROOT / "test-artifacts" / "recovery.jsonl").open("a") as out:
        out.write(json.dumps(figure) + "\n")


def test_workers_alone_recover_a_killed_leader_s_job_and_publish_nothing_twice(
    broker_url: str,
    own_ledger_url: str,
    own_queues: list[str],
    producer: ConveyorApp,
    tmp_path: Path,
    start_worker: WorkerFactory,
) -> None:
    consumed, unconsumed = own_queues
    env = conveyor_env(
        broker_url, own_ledger_url, tmp_path, relay_in_workers="true", job_lease_s=SHORT_LEASE_S
    )
    workers = {w.pid: w for w in (start_worker(env, consumed, concurrency=1) for _ in range(2))}
    first_pid = wait_for(lambda: leader_pid(producer), timeout_s=60)
    first_term = producer.ledger.lease(RELAY_LEASE).term  # type: ignore[union-attr]
    assert first_pid in workers, "a worker holds the relay's lease"

    # Delayed jobs on a queue no worker consumes: the relays' publishes stay countable.
    delayed = [
        enqueue("test.count", {"counter": "-"}, queue=unconsumed, delay=0.3 * i, app=producer)
        for i in range(DELAYED)
    ]
    # One long job per worker (concurrency 1, prefetch 1): the leader runs one of them.
    sleepers = [enqueue("test.sleep", {"s": 5}, queue=consumed, app=producer) for _ in range(2)]
    leader_node = f"conveyor-{first_pid}@"
    wait_for(
        lambda: any(
            state_of(producer, j) == "running"
            and (get_job(j, app=producer).worker or "").startswith(leader_node)
            for j in sleepers
        ),
        timeout_s=60,
    )
    killed_job = next(
        j for j in sleepers if (get_job(j, app=producer).worker or "").startswith(leader_node)
    )
    kill_group(workers[first_pid])
    killed_at = time.monotonic()

    wait_for(lambda: leader_pid(producer) not in (None, first_pid), timeout_s=30)
    took_over_s = time.monotonic() - killed_at
    assert leader_pid(producer) in workers
    assert producer.ledger.lease(RELAY_LEASE).term == first_term + 1  # type: ignore[union-attr]

    # A due retry after the kill is the new leader's to publish.
    retrying = enqueue("test.retry_after", {"delay_s": 0.5}, queue=consumed, app=producer)
    wait_for(lambda: (get_job(killed_job, app=producer).attempts or 0) >= 2, timeout_s=60)
    rerun_s = time.monotonic() - killed_at
    wait_for(lambda: state_of(producer, killed_job) == "succeeded", timeout_s=60)
    wait_for(lambda: state_of(producer, retrying) == "succeeded", timeout_s=60)
    assert get_job(retrying, app=producer).attempts == 2

    wait_for(lambda: all(state_of(producer, j) == "queued" for j in delayed), timeout_s=60)
    published = Counter(drain_ids(broker_url, unconsumed))
    assert set(published) == set(delayed), "every delayed job was published"
    assert max(published.values()) == 1, "no delayed job was published twice"
    record(
        {
            "test": "relay_leader_kill",
            "broker": broker_url.split(":", 1)[0],
            "takeover_s": round(took_over_s, 2),
            "killed_job_rerun_s": round(rerun_s, 2),
        }
    )
    assert rerun_s < 15, f"the killed worker's job ran again {rerun_s:.1f}s after the kill"


def test_a_worker_stopping_cleanly_hands_the_duty_over_at_once(
    broker_url: str,
    own_ledger_url: str,
    own_queues: list[str],
    producer: ConveyorApp,
    tmp_path: Path,
    start_worker: WorkerFactory,
) -> None:
    env = conveyor_env(broker_url, own_ledger_url, tmp_path, relay_in_workers="true")
    workers = {w.pid: w for w in (start_worker(env, own_queues[0]) for _ in range(2))}
    first = wait_for(lambda: leader_pid(producer), timeout_s=60)
    lease_before = producer.ledger.lease(RELAY_LEASE)
    assert lease_before is not None
    workers[first].terminate()
    workers[first].wait(60)
    # The lease was given up (expired in the past), not left to run out.
    given_up = producer.ledger.lease(RELAY_LEASE)
    assert given_up is not None
    assert given_up.holder != lease_before.holder or given_up.expires_at < lease_before.expires_at
    second = wait_for(lambda: leader_pid(producer) not in (None, first), timeout_s=30)
    assert second


def test_workers_without_the_duty_leave_it_to_a_relay(
    broker_url: str,
    own_ledger_url: str,
    own_queues: list[str],
    producer: ConveyorApp,
    tmp_path: Path,
    start_worker: WorkerFactory,
    start_relay: ProcessFactory,
) -> None:
    env = conveyor_env(broker_url, own_ledger_url, tmp_path, relay_in_workers="false")
    start_worker(env, own_queues[0])
    ready = enqueue("test.sleep", {"s": 0}, queue=own_queues[0], app=producer)
    wait_for(lambda: state_of(producer, ready) == "succeeded", timeout_s=60)
    job_id = enqueue("test.sleep", {"s": 0}, queue=own_queues[0], delay=0.2, app=producer)
    time.sleep(2)  # the worker consumes and the job is due: only a relay would publish it
    assert state_of(producer, job_id) == "scheduled"
    start_relay(env)
    wait_for(lambda: state_of(producer, job_id) == "succeeded", timeout_s=60)
