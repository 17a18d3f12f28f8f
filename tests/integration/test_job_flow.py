"""A job's whole path on each broker: enqueue (CLI and Python), a real worker, the ledger.

The tests of a broker share one worker and one relay (none of them stops either); each
test has a queue of its own, which the worker consumes only while that test runs.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from celery import Celery

from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import enqueue, get_job
from conveyor.worker.policy import delay_ceiling_s
from tests.conftest import BROKERS, SharedWorker, run_cli, terminal, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=sorted(BROKERS))
def broker_url(request: pytest.FixtureRequest) -> str:
    """Module-scoped here, so that the module's tests share a worker per broker."""
    return BROKERS[request.param]


@pytest.mark.usefixtures("consuming")
def test_cli_enqueue_runs_on_a_worker_and_jobs_show_prints_it(
    app: ConveyorApp, env: dict[str, str], queue: str
) -> None:
    enqueued = run_cli("enqueue", "demo.work", '{"n": 7}', "--queue", queue, env=env)
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = enqueued.stdout.strip()

    assert wait_for(lambda: terminal(app, job_id)) == "succeeded"
    shown = run_cli("jobs", "show", job_id, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["id"] == job_id
    assert view["task"] == "demo.work"
    assert view["queue"] == queue
    assert view["state"] == "succeeded"
    assert view["attempts"] == 1
    assert view["payload"] == {"n": 7}
    assert view["result"] == {"n": 7, "square": 49, "attempt": 1}
    assert view["error"] is None
    assert view["created_at"] <= view["updated_at"]


@pytest.mark.usefixtures("consuming")
def test_python_enqueue_runs_and_records_the_result(
    app: ConveyorApp, env: dict[str, str], queue: str
) -> None:
    job_id = enqueue("demo.work", {"n": 12}, queue=queue, app=app)
    assert wait_for(lambda: terminal(app, job_id)) == "succeeded"
    job = get_job(job_id, app=app)
    assert job.result == {"n": 12, "square": 144, "attempt": 1}
    assert job.started_at is not None
    assert job.finished_at is not None
    assert job.created_at <= job.started_at <= job.finished_at


def test_same_idempotency_key_returns_the_same_job_and_runs_once(
    app: ConveyorApp, queue: str, shared_worker: SharedWorker
) -> None:
    key = f"order-{queue}"
    first = enqueue("demo.work", {"n": 1}, idempotency_key=key, queue=queue, app=app)
    second = enqueue("demo.work", {"n": 1}, idempotency_key=key, queue=queue, app=app)
    assert first == second
    shared_worker.consume(queue)  # only now: both enqueues are on the queue before it runs
    try:
        assert wait_for(lambda: terminal(app, first)) == "succeeded"
    finally:
        shared_worker.release(queue)
    job = get_job(first, app=app)
    assert job.idempotency_key == key
    assert job.attempts == 1


@pytest.mark.usefixtures("consuming", "shared_relay")
def test_transient_failures_retry_within_the_policy_then_succeed(
    app: ConveyorApp, queue: str
) -> None:
    from conveyor.tasks.demo import work  # noqa: F401  (registers demo.work)
    from conveyor.worker.jobs import spec_for

    policy = spec_for("demo.work").policy
    job_id = enqueue("demo.work", {"n": 2, "fail_times": 2}, queue=queue, app=app)
    assert wait_for(lambda: terminal(app, job_id)) == "succeeded"

    job = get_job(job_id, app=app)
    assert job.attempts == 3
    assert job.result == {"n": 2, "square": 4, "attempt": 3}
    failed = app.ledger.attempts(job_id)
    assert [a.attempt for a in failed] == [1, 2]
    assert all(a.outcome == "scheduled" for a in failed)
    assert all(a.error_type == "conveyor.tasks.demo.TransientError" for a in failed)
    # Each retry waited within the policy's bounds, measured by the ledger's timestamps.
    starts = [a.started_at for a in failed] + [job.started_at]
    for previous, next_start in zip(failed, starts[1:], strict=True):
        assert previous.delay_s is not None
        assert 0 <= previous.delay_s <= delay_ceiling_s(policy, previous.attempt)
        assert next_start is not None
        earliest = previous.finished_at + timedelta(seconds=previous.delay_s)
        assert next_start >= earliest - timedelta(milliseconds=50)


@pytest.mark.usefixtures("consuming", "shared_relay")
def test_exhausted_and_fatal_jobs_end_dead_with_their_error(app: ConveyorApp, queue: str) -> None:
    exhausted = enqueue("demo.work", {"n": 3, "always_fail": True}, queue=queue, app=app)
    fatal = enqueue("demo.work", {"n": 4, "fatal": True}, queue=queue, app=app)
    assert wait_for(lambda: terminal(app, exhausted)) == "dead"
    assert wait_for(lambda: terminal(app, fatal)) == "dead"

    job = get_job(exhausted, app=app)
    assert (job.attempts, job.dead_reason) == (4, "exhausted")
    assert job.error_type == "conveyor.tasks.demo.TransientError"
    assert job.error_traceback is not None
    assert "TransientError" in job.error_traceback
    assert [a.outcome for a in app.ledger.attempts(exhausted)] == [
        "scheduled",
        "scheduled",
        "scheduled",
        "dead",
    ]
    job = get_job(fatal, app=app)
    assert (job.attempts, job.dead_reason) == (1, "fatal")
    assert job.error_type == "conveyor.worker.errors.Fatal"
    assert "cannot succeed" in (job.error_message or "")


@pytest.mark.usefixtures("consuming")
def test_a_foreign_celery_producer_gets_a_ledger_row(
    app: ConveyorApp, env: dict[str, str], broker_url: str, queue: str
) -> None:
    """A producer that only has Celery and the broker URL: plain send_task, no Conveyor code."""
    foreign = Celery("foreign", broker=broker_url)
    foreign.conf.task_serializer = "json"
    result = foreign.send_task(
        "demo.work", kwargs={"n": 5}, queue=queue, headers={"idempotency_key": f"f-{queue}"}
    )
    assert wait_for(lambda: terminal(app, result.id)) == "succeeded"
    job = get_job(result.id, app=app)
    assert job.task == "demo.work"
    assert job.queue == queue
    assert job.payload == {"n": 5}
    assert job.idempotency_key == f"f-{queue}"
    assert job.result == {"n": 5, "square": 25, "attempt": 1}
    foreign.close()
