"""The relay: delayed jobs wait in the ledger until due, several relays publish each once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import enqueue, get_job
from conveyor.worker.models import JobState
from conveyor.worker.relay import Relay
from tests.conftest import Processes, ProcessFactory, WorkerFactory, run_cli, wait_for

pytestmark = pytest.mark.integration


def test_a_delayed_job_waits_in_the_ledger_until_the_relay_publishes_it(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    start_worker: WorkerFactory,
    start_relay: ProcessFactory,
) -> None:
    start_worker(env, queue)
    job_id = enqueue("demo.work", {"n": 3}, queue=queue, delay=2, app=app)
    job = get_job(job_id, app=app)
    assert job.state == JobState.SCHEDULED
    assert job.run_at is not None
    time.sleep(2.5)  # due now, but no relay runs: nothing was published
    assert get_job(job_id, app=app).state == JobState.SCHEDULED

    start_relay(env)
    wait_for(lambda: get_job(job_id, app=app).state == JobState.SUCCEEDED)
    job = get_job(job_id, app=app)
    assert job.started_at is not None
    assert job.started_at >= job.created_at


def test_two_relays_publish_each_due_job_once(
    app: ConveyorApp, env: dict[str, str], queue: str, start_worker: WorkerFactory
) -> None:
    ids = [enqueue("test.sleep", {"s": 0}, queue=queue, delay=0.5, app=app) for _ in range(200)]
    time.sleep(0.6)
    first, second = Relay(app, batch=20), Relay(app, batch=20)
    released = 0
    while released < len(ids):
        done = first.run_once().released + second.run_once().released
        assert done > 0
        released += done
    assert released == len(ids)
    assert app.ledger.count_by_state(ids=ids) == {"queued": len(ids)}
    start_worker(env, queue)
    wait_for(lambda: app.ledger.count_by_state(ids=ids) == {"succeeded": len(ids)}, timeout_s=120)
    assert all(get_job(i, app=app).attempts == 1 for i in ids)


def test_the_relay_touches_its_alive_file(
    env: dict[str, str], processes: Processes, tmp_path: Path
) -> None:
    alive = tmp_path / "relay.alive"
    processes.start(env, "relay", "--poll", "0.1", "--alive-file", str(alive))
    wait_for(alive.exists, timeout_s=30)
    first = alive.stat().st_mtime
    wait_for(lambda: alive.stat().st_mtime > first, timeout_s=30)


def test_conveyor_queues_shows_depth_age_and_relay_lag(
    app: ConveyorApp, env: dict[str, str], queue: str
) -> None:
    for n in range(2):
        enqueue("demo.work", {"n": n}, queue=queue, app=app)
    enqueue("demo.work", {"n": 9}, queue=queue, delay=0.1, app=app)
    time.sleep(0.5)  # due, but no relay runs: the lag grows
    shown = run_cli("queues", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    stats = json.loads(shown.stdout)
    mine = next(q for q in stats["queues"] if q["name"] == queue)
    assert (mine["depth"], mine["scheduled"], mine["running"], mine["dead"]) == (2, 1, 0, 0)
    assert mine["oldest_queued_age_s"] >= 0.5
    assert stats["relay_lag_s"] >= 0.3
