"""Deadlines: a job not started by its ``expires_at`` ends ``cancelled`` (``expired``) unrun.

On Redis only: a deadline is enforced in the ledger (the claim, the relay), never by the
broker. The tests share one worker, which takes a test's queue only when the test says,
so a job can wait out its deadline before any worker sees it. The last test runs the
claim on the embedded SQLite ledger and reads the console's job page.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conveyor.config import Settings
from conveyor.worker.api.app import create_api
from conveyor.worker.api.keys import Scope, create_key
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.client import JobRequest, enqueue, enqueue_many, get_job
from conveyor.worker.errors import UsageError
from conveyor.worker.ledger import NewJob
from conveyor.worker.ledger.statements import EXPIRED
from conveyor.worker.models import JobState, utcnow
from conveyor.worker.relay import Relay
from conveyor.worker.schema import ensure_schema
from tests.conftest import (
    BROKERS,
    REDIS_URL,
    SharedWorker,
    counter_value,
    delete_queues,
    effects_per_job,
    new_counter,
    queued_messages,
    run_cli,
    terminal,
    wait_for,
)
from tests.integration.test_api_harness import Api, api_env, assert_problem, serve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["redis"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Module-scoped, so that the module's tests share one worker."""
    return BROKERS[request.param]


@pytest.fixture(scope="module")
def api(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("deadlines-api")
    yield from serve(tmp, api_env(pg_url, REDIS_URL, tmp))


def test_an_expired_job_never_runs_and_one_within_its_deadline_does(
    app: ConveyorApp, env: dict[str, str], queue: str, shared_worker: SharedWorker
) -> None:
    counter = new_counter(app)
    expired = enqueue("test.count", {"counter": counter}, queue=queue, expires_in=0.3, app=app)
    in_time = enqueue(
        "test.count",
        {"counter": counter},
        queue=queue,
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        app=app,
    )
    job = get_job(expired, app=app)
    assert job.expires_at is not None
    assert timedelta(seconds=0.25) < job.expires_at - job.created_at < timedelta(seconds=0.35)
    wait_for(lambda: utcnow() > job.expires_at, every_s=0.05)  # type: ignore[operator]
    assert queued_messages(REDIS_URL, queue) == 2  # both were published; no worker took them

    shared_worker.consume(queue)  # the worker sees them only now, past the first's deadline
    try:
        assert wait_for(lambda: terminal(app, expired), timeout_s=60) == JobState.CANCELLED
        assert wait_for(lambda: terminal(app, in_time), timeout_s=60) == JobState.SUCCEEDED
        wait_for(lambda: queued_messages(REDIS_URL, queue) == 0, timeout_s=10)  # both acked
    finally:
        shared_worker.release(queue)
    job = get_job(expired, app=app)
    assert (job.cancel_reason, job.attempts, job.started_at) == (EXPIRED, 0, None)
    assert job.finished_at is not None
    assert effects_per_job(app, [expired, in_time]) == {in_time: 1}  # its effect never happened
    assert counter_value(app, counter) == 1
    assert get_job(in_time, app=app).cancel_reason is None

    shown = run_cli("jobs", "show", expired, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert (view["state"], view["cancel_reason"]) == ("cancelled", "expired")
    assert view["expires_at"] == job.expires_at.isoformat()  # type: ignore[union-attr]


def test_cli_enqueue_expires_in_sets_the_deadline(
    app: ConveyorApp, env: dict[str, str], queue: str
) -> None:
    enqueued = run_cli(
        "enqueue", "demo.work", '{"n": 2}', "--queue", queue, "--expires-in", "90", env=env
    )
    assert enqueued.returncode == 0, enqueued.stderr
    job = get_job(enqueued.stdout.strip(), app=app)
    assert job.expires_at is not None
    assert timedelta(seconds=89) < job.expires_at - job.created_at <= timedelta(seconds=90)
    refused = run_cli("enqueue", "demo.work", "{}", "--queue", queue, "--expires-in", "0", env=env)
    assert refused.returncode != 0
    assert "--expires-in" in refused.stderr


def test_the_relay_cancels_a_delayed_job_whose_deadline_passed_instead_of_publishing_it(
    producer: ConveyorApp, queue: str
) -> None:
    counter = new_counter(producer)
    late = enqueue(
        "test.count", {"counter": counter}, queue=queue, delay=0.4, expires_in=0.2, app=producer
    )
    due = enqueue(
        "test.count", {"counter": counter}, queue=queue, delay=0.2, expires_in=60, app=producer
    )
    wait_for(lambda: utcnow() > get_job(late, app=producer).run_at, every_s=0.05)  # type: ignore[operator]

    assert Relay(producer, batch=50).run_once().released == 1  # `due` only
    job = get_job(late, app=producer)
    assert (job.state, job.cancel_reason, job.attempts) == (JobState.CANCELLED, EXPIRED, 0)
    assert (job.run_at, job.started_at) == (None, None)
    assert get_job(due, app=producer).state == JobState.QUEUED
    wait_for(lambda: queued_messages(REDIS_URL, queue) == 1, timeout_s=10)  # `due`'s message
    assert Relay(producer, batch=50).run_once().released == 0  # and it stays cancelled
    assert get_job(late, app=producer).state == JobState.CANCELLED


@pytest.mark.parametrize(
    ("deadline", "message"),
    [
        ({"expires_in": 5, "expires_at": datetime.now(UTC) + timedelta(hours=1)}, "not both"),
        ({"expires_in": 0}, "expires_in must be > 0"),
        ({"expires_in": -1.5}, "expires_in must be > 0"),
        ({"expires_in": timedelta(0)}, "expires_in must be > 0"),
        ({"expires_at": datetime(2099, 1, 1)}, "aware datetime"),  # naive
        ({"expires_at": datetime.now(UTC) - timedelta(seconds=1)}, "already past"),
    ],
)
def test_the_client_refuses_a_bad_deadline_and_writes_nothing(
    app: ConveyorApp, queue: str, deadline: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        enqueue("demo.work", {"n": 1}, queue=queue, app=app, **deadline)
    results = enqueue_many(
        [
            JobRequest("demo.work", {"n": 1}, queue=queue, **deadline),
            JobRequest("demo.work", {"n": 2}, queue=queue, expires_in=60),
        ],
        app=app,
    )
    assert isinstance(results[0].error, UsageError)
    assert results[0].id is None
    assert results[1].error is None
    assert [row.id for row in app.ledger.list(queue=queue, limit=10)] == [results[1].id]


def test_the_api_takes_a_deadline_and_refuses_bad_ones(api: Api, pg_url: str) -> None:
    client = api.client(api.key("enqueue", "read"))
    queue = f"test-api-{uuid.uuid4().hex[:10]}"
    base = {"task": "demo.work", "payload": {"n": 1}, "queue": queue}
    try:
        accepted = client.post("/v1/jobs", json=base | {"expires_in_s": 120})
        assert accepted.status_code == 202, accepted.text
        view = client.get(f"/v1/jobs/{accepted.json()['id']}").json()
        assert view["expires_at"] is not None
        assert view["cancel_reason"] is None
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        at = client.post("/v1/jobs", json=base | {"expires_at": later})
        assert at.status_code == 202, at.text
        shown = client.get(f"/v1/jobs/{at.json()['id']}").json()["expires_at"]
        assert datetime.fromisoformat(shown) == datetime.fromisoformat(later)

        for bad in ({"expires_in_s": 0}, {"expires_in_s": -3}, {"expires_in_s": "soon"}):
            assert_problem(client.post("/v1/jobs", json=base | bad), 422, "invalid-body")
        both = base | {"expires_in_s": 5, "expires_at": later}
        assert_problem(client.post("/v1/jobs", json=both), 422, "invalid-body")
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        problem = assert_problem(
            client.post("/v1/jobs", json=base | {"expires_at": past}), 400, "bad-request"
        )
        assert "already past" in str(problem["detail"])

        batch = client.post(
            "/v1/jobs:batch",
            json={"jobs": [base | {"expires_at": past}, base | {"expires_in_s": 30}]},
        )
        assert batch.status_code == 200, batch.text
        assert [item["status"] for item in batch.json()["items"]] == [400, 202]
        bad_batch = client.post("/v1/jobs:batch", json={"jobs": [base | {"expires_in_s": 0}]})
        assert_problem(bad_batch, 422, "invalid-body")
    finally:
        delete_queues(REDIS_URL, [queue], pg_url=pg_url)


def test_on_sqlite_the_claim_expires_a_late_job_and_the_console_shows_why(
    tmp_path: Path,
) -> None:
    """The embedded default (SQLite) runs the same statements through SQLAlchemy."""
    settings = Settings(data_dir=tmp_path / "var")
    ensure_schema(settings)
    embedded = create_app(settings)
    try:
        late, running = (
            NewJob(
                id=str(uuid.uuid4()),
                task="t.embedded",
                queue="q",
                payload={},
                max_attempts=1,
                expires_at=utcnow() + timedelta(seconds=expires_in_s),
            )
            for expires_in_s in (-1, 60)
        )
        for new in (late, running):
            embedded.ledger.create(new)
        claim = embedded.ledger.claim(late.id, lease_s=10, worker="w@host", foreign=late)
        assert (claim.attempt, claim.state, claim.expired) == (None, JobState.CANCELLED, True)
        again = embedded.ledger.claim(late.id, lease_s=10, worker="w@host", foreign=late)
        assert (again.attempt, again.expired) == (None, False)  # already cancelled: a duplicate
        assert embedded.ledger.claim(running.id, lease_s=10, worker="w@host", foreign=running)
        assert embedded.ledger.progress(running.id, 1, 3, 10, "n" * 300)
        assert not embedded.ledger.progress(running.id, 2, 4, 10, None)  # fenced: not its attempt
        row = embedded.ledger.require(running.id)
        assert (row.progress_done, row.progress_total, row.progress_note) == (3, 10, "n" * 200)

        _, token = create_key(embedded.ledger, "embedded", [Scope.READ])
        client = TestClient(create_api(embedded), base_url="http://127.0.0.1")
        form = client.get("/console/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert csrf is not None
        client.post("/console/login", data={"csrf_token": csrf.group(1), "api_key": token})
        page = client.get(f"/console/jobs/{late.id}")
        assert page.status_code == 200
        assert re.search(r'id="job-state">cancelled</span> \(expired\)', page.text)
        assert "Expires at" in page.text
        page = client.get(f"/console/jobs/{running.id}")
        assert re.search(r'id="job-progress">3 of 10: n{200} \(at ', page.text)
    finally:
        embedded.ledger.dispose()
        embedded.close()
