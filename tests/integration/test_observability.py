"""Metrics, liveness, readiness and JSON logs of real workers and relays.

A worker and a relay run with ``--metrics-port``; the test scrapes them over HTTP and
compares what they count with what the ledger holds. Liveness is checked by putting a
TCP proxy between a worker and Redis and cutting it.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from conveyor.worker.app import ConveyorApp
from conveyor.worker.chaos.proxy import FaultProxy
from conveyor.worker.client import enqueue
from conveyor.worker.models import Job, JobAttempt
from tests.conftest import (
    Processes,
    Samples,
    metric_samples,
    metric_value,
    run_cli,
    terminal,
    wait_for,
)
from tests.integration.test_api_harness import free_port
from tests.jobs import counters

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REDIS_ONLY = pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
SECRET = "s3cr3t-payload-value-do-not-log"


def scrape(port: int, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=5)
    answer.raise_for_status()
    return metric_samples(answer.text)


value = metric_value


def status(port: int, path: str) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=3).status_code
    except httpx.HTTPError:
        return 0


def start_service(
    processes: Processes, env: dict[str, str], *args: str, port: int
) -> subprocess.Popen[bytes]:
    process = processes.start(env, *args, "--metrics-port", str(port))
    wait_for(lambda: status(port, "/readyz") == 200, timeout_s=60)
    return process


@pytest.fixture
def gate(app: ConveyorApp) -> str:
    """A counter at 0: ``test.gated`` jobs on it fail (retryable, or fatal if asked)."""
    name = f"gate-{uuid.uuid4().hex[:8]}"
    with app.ledger.transaction() as session:
        session.execute(counters.insert().values(name=name, value=0))
    return name


@REDIS_ONLY
def test_scraped_counters_and_gauges_equal_the_ledgers_numbers(
    app: ConveyorApp, env: dict[str, str], queue: str, processes: Processes, gate: str
) -> None:
    worker_port, relay_port = free_port(), free_port()
    start_service(processes, env, "worker", "-Q", queue, "-c", "2", port=worker_port)
    start_service(processes, env, "relay", "--poll", "0.1", port=relay_port)
    with app.ledger.transaction() as session:
        session.execute(counters.insert().values(name=f"{gate}-n", value=0))
    jobs = [enqueue("test.count", {"counter": f"{gate}-n"}, queue=queue, app=app) for _ in range(6)]
    jobs += [enqueue("test.retry_after", {"delay_s": 0.2}, queue=queue, app=app) for _ in range(2)]
    jobs += [enqueue("test.gated", {"gate": gate, "fatal": True}, queue=queue, app=app)]
    jobs += [enqueue("test.gated", {"gate": gate}, queue=queue, app=app)]
    wait_for(lambda: all(terminal(app, job) for job in jobs), timeout_s=60)

    with app.ledger.session() as session:
        rows = session.execute(
            select(Job.task, Job.state, Job.attempts, Job.dead_reason).where(Job.queue == queue)
        ).all()
        retried = session.scalar(
            select(func.count())
            .select_from(JobAttempt)
            .join(Job, Job.id == JobAttempt.job_id)
            .where(Job.queue == queue, JobAttempt.outcome == "scheduled")
        )
    worker = wait_for(lambda: _settled(scrape(worker_port), queue, len(rows)))
    for task in ("test.count", "test.retry_after", "test.gated"):
        mine = [row for row in rows if row.task == task]
        labels = {"task": task, "queue": queue}
        assert value(worker, "conveyor_jobs_started_total", **labels) == sum(
            row.attempts for row in mine
        )
        assert value(worker, "conveyor_jobs_succeeded_total", **labels) == sum(
            row.state == "succeeded" for row in mine
        )
    assert (
        sum(
            value(worker, "conveyor_jobs_retried_total", task=task, queue=queue)
            for task in ("test.count", "test.retry_after", "test.gated")
        )
        == retried
        == 3
    )  # 2 RetryAfter, 1 failure of the non-fatal gated job
    for reason in ("fatal", "exhausted"):
        dead = sum(row.dead_reason == reason for row in rows)
        assert dead == 1
        assert (
            value(
                worker,
                "conveyor_jobs_dead_lettered_total",
                task="test.gated",
                queue=queue,
                reason=reason,
            )
            == dead
        )
    run = value(
        worker,
        "conveyor_job_run_seconds_count",
        task="test.count",
        queue=queue,
        outcome="succeeded",
    )
    assert run == 6

    relay = scrape(relay_port)
    assert value(relay, "conveyor_queue_jobs", queue=queue, state="dead") == 2
    assert value(relay, "conveyor_queue_jobs", queue=queue, state="queued") == 0
    assert value(relay, "conveyor_relay_published_total", queue=queue) == retried
    assert value(relay, "conveyor_ledger_write_seconds_count", operation="claim") == 0
    assert value(worker, "conveyor_ledger_write_seconds_count", operation="claim") >= len(rows)


def _settled(samples: Samples, queue: str, jobs: int) -> Samples | None:
    """The scrape once every job's last count reached it (the pool writes asynchronously)."""
    finished = {"conveyor_jobs_succeeded_total", "conveyor_jobs_dead_lettered_total"}
    done = sum(
        count
        for (name, labels), count in samples.items()
        if name in finished and ("queue", queue) in labels
    )
    return samples if done == jobs else None


@REDIS_ONLY
def test_oldest_job_age_grows_while_a_queue_has_no_consumer(
    app: ConveyorApp, env: dict[str, str], queue: str, processes: Processes
) -> None:
    relay_port = free_port()
    start_service(processes, env, "relay", "--poll", "0.1", port=relay_port)
    enqueue("test.sleep", {"s": 0}, queue=queue, app=app)
    first = value(scrape(relay_port), "conveyor_queue_oldest_job_age_seconds", queue=queue)
    assert value(scrape(relay_port), "conveyor_queue_jobs", queue=queue, state="queued") == 1
    later = wait_for(
        lambda: (
            age
            if (
                age := value(
                    scrape(relay_port), "conveyor_queue_oldest_job_age_seconds", queue=queue
                )
            )
            >= first + 1.5
            else None
        ),
        timeout_s=30,
    )
    assert later > first


@REDIS_ONLY
def test_liveness_fails_while_the_broker_is_cut_off_and_recovers(
    env: dict[str, str], queue: str, processes: Processes
) -> None:
    proxy = FaultProxy("127.0.0.1", 6379)
    proxy.start()
    try:
        port = free_port()
        cut_env = env | {"CONVEYOR_BROKER_URL": f"redis://127.0.0.1:{proxy.port}/11"}
        start_service(processes, cut_env, "worker", "-Q", queue, "-c", "1", port=port)
        wait_for(lambda: status(port, "/healthz") == 200, timeout_s=30)
        consuming = "conveyor_worker_consuming"
        assert sum(v for (n, _), v in scrape(port).items() if n == consuming) == 1
        url = f"http://127.0.0.1:{port}"
        assert run_cli("health", "--url", url, "--json", env=env).returncode == 0

        proxy.set_cut(True)
        wait_for(lambda: status(port, "/healthz") == 503, timeout_s=30)
        assert sum(v for (n, _), v in scrape(port).items() if n == consuming) == 0
        down = run_cli("health", "--url", url, "--json", env=env)
        assert down.returncode == 1
        assert json.loads(down.stdout)["checks"]["live"] == "failed: HTTP 503"

        proxy.set_cut(False)
        wait_for(lambda: status(port, "/healthz") == 200, timeout_s=60)
    finally:
        processes.stop_all()  # before the proxy goes, so no connection is left half-open
        proxy.stop()


@REDIS_ONLY
def test_health_checks_the_ledger_and_the_broker(env: dict[str, str], tmp_path: Path) -> None:
    ok = run_cli("health", "--json", env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"ok": True, "checks": {"ledger": "ok", "broker": "ok"}}
    dead_broker = env | {"CONVEYOR_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    down = run_cli("health", "--json", env=dead_broker)
    assert down.returncode == 1
    checks: dict[str, Any] = json.loads(down.stdout)["checks"]
    assert checks["ledger"] == "ok"
    assert checks["broker"].startswith("failed: ")


@REDIS_ONLY
def test_metrics_are_closed_off_loopback_without_a_token_and_check_the_token(
    env: dict[str, str], processes: Processes
) -> None:
    port = free_port()
    everywhere = env | {"CONVEYOR_METRICS_ADDRESS": "0.0.0.0"}
    start_service(processes, everywhere, "relay", port=port)
    closed = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert closed.status_code == 403
    assert "CONVEYOR_METRICS_TOKEN" in closed.json()["detail"]
    assert status(port, "/healthz") == 200  # the probes still answer
    processes.stop_all()

    token = uuid.uuid4().hex
    port = free_port()
    start_service(processes, everywhere | {"CONVEYOR_METRICS_TOKEN": token}, "relay", port=port)
    assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=wrong, timeout=5)
    assert answer.status_code == 401
    assert any(name == "conveyor_outbox_lag_seconds" for name, _ in scrape(port, token))


@REDIS_ONLY
def test_worker_logs_are_json_lines_with_the_job_and_no_payload(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    processes: Processes,
    gate: str,
    tmp_path: Path,
) -> None:
    worker = processes.start(env, "worker", "-Q", queue, "-c", "1")
    processes.start(env, "relay", "--poll", "0.1")
    job = enqueue("test.gated", {"gate": gate, "secret": SECRET}, queue=queue, app=app)
    wait_for(lambda: terminal(app, job), timeout_s=60)
    processes.stop_all()
    log = (tmp_path / f"worker-{processes.started.index(worker)}.log").read_text()
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    mine = [event for event in events if event.get("job_id") == job]
    by_name = {event["event"]: event for event in mine}
    retry, dead = by_name["job.retry_scheduled"], by_name["job.dead"]
    assert retry["level"] == "warning"
    assert (retry["task"], retry["queue"], retry["attempt"]) == ("test.gated", queue, 1)
    assert retry["error_type"] == "builtins.RuntimeError"
    assert dead["level"] == "error"
    assert (dead["attempt"], dead["reason"]) == (2, "exhausted")
    assert all("timestamp" in event and "logger" in event for event in events)
    assert SECRET not in log
