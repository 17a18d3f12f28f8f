"""One dead-letter path: every origin leaves the same record, the chain sees each event once,
and every producer refuses the same bad input with the same words.

Real PostgreSQL, Redis and RabbitMQ throughout; the worker and the API are real processes.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from celery import Celery
from psycopg import sql

from conveyor.worker.admission import IdempotencyConflict
from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import enqueue
from conveyor.worker.constants import DeadReason
from conveyor.worker.deadletter import Letter
from conveyor.worker.delivery import Delivery
from conveyor.worker.errors import Failure, PayloadInvalid, UnknownTask
from conveyor.worker.jobs import REGISTRY
from conveyor.worker.ledger import NewJob
from conveyor.worker.models import JobState
from conveyor.worker.operations.dlq import DeadFilter, list_dead
from conveyor.worker.outcomes import Event, JobEvent
from tests.conftest import (
    REDIS_URL,
    ProcessFactory,
    WorkerFactory,
    delete_queues,
    run_cli,
    state_of,
    wait_for,
)
from tests.integration.test_api_harness import Api, api_env, serve
from tests.integration.test_dead_letters import (
    dead_letters_on_broker,
    dead_rows,
    new_gate,
    publish_garbage,
)

pytestmark = pytest.mark.integration

QUALIFIED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")
"""``module.QualName``: at least one dot, identifiers only."""
RECORD_KEYS = set(Letter("id", "t", "q", DeadReason.FATAL, Failure("builtins.E", "m"), {}).record())
"""The one shape of a message on a ``.dead`` queue."""


@pytest.mark.timeout(400)
def test_every_origin_leaves_the_same_record_in_the_ledger_and_on_the_dead_queue(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    broker_url: str,
    start_worker: WorkerFactory,
    start_relay: ProcessFactory,
) -> None:
    start_worker(env, queue)
    start_relay(env)
    gate = new_gate(app)  # stays closed: test.gated fails
    foreign = Celery("foreign", broker=broker_url)
    origins = {
        "exhausted": enqueue("test.gated", {"gate": gate}, queue=queue, app=app),
        "fatal": enqueue("test.gated", {"gate": gate, "fatal": True}, queue=queue, app=app),
        "invalid_payload": foreign.send_task("demo.work", kwargs={"n": -1}, queue=queue).id,
        "unknown_task": foreign.send_task("no.such.task", kwargs={"a": 1}, queue=queue).id,
    }
    foreign.send_task("demo.work", kwargs={"n": 1}, queue=queue, task_id="x" * 100)
    publish_garbage(broker_url, queue)
    foreign.close()

    rows = wait_for(lambda: found if len(found := dead_rows(env, queue)) == 6 else None)
    by_reason = {row["reason"]: row for row in rows}
    assert set(by_reason) == {*origins, "invalid_message", "undecodable"}
    for reason, job_id in origins.items():
        assert by_reason[reason]["id"] == job_id
    letters = wait_for(
        lambda: found if len(found := dead_letters_on_broker(broker_url, queue)) == 6 else None
    )
    assert all(set(letter["body"]) == RECORD_KEYS for letter in letters)
    on_broker = {letter["body"]["reason"]: letter for letter in letters}
    assert set(on_broker) == set(by_reason)
    for reason, row in by_reason.items():
        body = on_broker[reason]["body"]
        assert (body["job_id"], body["task"], body["queue"]) == (row["id"], row["task"], queue)
        assert on_broker[reason]["headers"]["x-conveyor-job-id"] == row["id"]
        assert body["error_type"] == row["error_type"]
        assert body["attempts"] == row["attempts"]
        assert QUALIFIED.match(row["error_type"]), row["error_type"]
        assert (body["message"] is None) == (reason in {"exhausted", "fatal", "invalid_payload"})
        # The documented filter finds it, by error type (the CLI) and by reason.
        by_type = dead_rows_where(env, queue, "--error-type", row["error_type"])
        assert row["id"] in {found["id"] for found in by_type}
        by_reason_filter = DeadFilter(queue=queue, reason=DeadReason(reason))
        assert [job.id for job in list_dead(app, by_reason_filter)] == [row["id"]]
    assert by_reason["exhausted"]["error_type"] == "builtins.RuntimeError"
    assert by_reason["fatal"]["error_type"] == "conveyor.worker.errors.Fatal"
    assert by_reason["invalid_payload"]["error_type"] == "conveyor.worker.errors.PayloadInvalid"
    assert on_broker["invalid_message"]["body"]["message"]["id"] == "x" * 100
    assert (by_reason["exhausted"]["attempts"], by_reason["fatal"]["attempts"]) == (2, 1)


def dead_rows_where(env: dict[str, str], queue: str, *options: str) -> list[dict[str, Any]]:
    listed = run_cli("dlq", "list", "--queue", queue, *options, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, Any]] = json.loads(listed.stdout)
    return rows


def test_a_bare_class_name_of_an_older_row_still_matches_the_qualified_filter(
    app: ConveyorApp, env: dict[str, str], queue: str, pg_url: str
) -> None:
    job_id = str(uuid.uuid4())
    app.ledger.bury(
        NewJob(id=job_id, task="old.task", queue=queue, payload={}, max_attempts=0),
        Failure("ContentDisallowed", "content_type: refused"),
        DeadReason.CONTENT_TYPE,
    )
    qualified = "kombu.exceptions.ContentDisallowed"
    assert [row["id"] for row in dead_rows_where(env, queue, "--error-type", qualified)] == [job_id]
    assert dead_rows_where(env, queue, "--error-type", "kombu.exceptions.DecodeError") == []


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_an_unstorable_message_is_kept_while_the_ledger_also_fails_and_buried_once_it_is_back(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    broker_url: str,
    pg_url: str,
    start_worker: WorkerFactory,
) -> None:
    """The ledger refuses the message's id, then cannot record the dead letter either (a
    trigger fails every dead row of this queue as a server shutting down would): the
    message must come back, not be acknowledged with no record."""
    tag = uuid.uuid4().hex[:10]
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute(f"CREATE SEQUENCE fires_{tag}")
        db.execute(
            f"""CREATE FUNCTION refuse_{tag}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM nextval('fires_{tag}');
                RAISE EXCEPTION 'the ledger is going away' USING ERRCODE = 'admin_shutdown';
            END $$"""
        )
        db.execute(
            f"CREATE TRIGGER refuse_{tag} BEFORE INSERT ON conveyor_jobs FOR EACH ROW "
            f"WHEN (NEW.queue = '{queue}' AND NEW.state = 'dead') EXECUTE FUNCTION refuse_{tag}()"
        )
    try:
        start_worker(env, queue)
        foreign = Celery("foreign", broker=broker_url)
        foreign.send_task("demo.work", kwargs={"n": 1}, queue=queue, task_id="y" * 100)
        foreign.close()

        def fired() -> int:
            with psycopg.connect(pg_url) as db:
                counted = sql.SQL("SELECT last_value, is_called FROM {}")
                row = db.execute(counted.format(sql.Identifier(f"fires_{tag}"))).fetchone()
            assert row is not None
            return int(row[0]) if row[1] else 0

        # It came back at least once after the ledger refused the dead letter.
        assert wait_for(lambda: fired() >= 2, timeout_s=90)
        assert dead_rows(env, queue) == []
    finally:
        with psycopg.connect(pg_url, autocommit=True) as db:
            db.execute(f"DROP TRIGGER refuse_{tag} ON conveyor_jobs")
            db.execute(f"DROP FUNCTION refuse_{tag}()")
            db.execute(f"DROP SEQUENCE fires_{tag}")
    rows = wait_for(lambda: found if (found := dead_rows(env, queue)) else None, timeout_s=90)
    assert [row["reason"] for row in rows] == ["invalid_message"]
    letters = wait_for(lambda: dead_letters_on_broker(broker_url, queue) or None)
    assert [letter["body"]["message"]["id"] for letter in letters] == ["y" * 100]


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_a_failing_observer_changes_no_outcome_and_each_event_reaches_each_observer_once(
    app: ConveyorApp, queue: str
) -> None:
    before: list[tuple[Event, str]] = []
    after: list[tuple[Event, str]] = []

    def broken(event: JobEvent) -> None:
        raise RuntimeError("an observer with a bug")

    app.outcomes.observers[:0] = [lambda e: before.append((e.event, e.job_id)), broken]
    app.outcomes.observers.append(lambda e: after.append((e.event, e.job_id)))
    gate = new_gate(app)

    def run(job_id: str, task: str, payload: dict[str, Any]) -> None:
        app.runtime.execute(REGISTRY[task], Delivery(job_id, queue, payload, None, None))

    ok = enqueue("demo.work", {"n": 1}, queue=queue, app=app)
    run(ok, "demo.work", {"n": 1})
    run(ok, "demo.work", {"n": 1})  # a duplicate delivery
    fatal = enqueue("test.gated", {"gate": gate, "fatal": True}, queue=queue, app=app)
    run(fatal, "test.gated", {"gate": gate, "fatal": True})
    retried = enqueue("test.gated", {"gate": gate}, queue=queue, app=app)
    run(retried, "test.gated", {"gate": gate})
    poison = str(uuid.uuid4())
    app.dead_letters.bury(
        Letter(poison, "no.such.task", queue, DeadReason.UNKNOWN_TASK, Failure("x.Y", "m"), {})
    )

    assert state_of(app, ok) == JobState.SUCCEEDED
    assert state_of(app, fatal) == JobState.DEAD
    assert state_of(app, retried) == JobState.SCHEDULED
    assert state_of(app, poison) == JobState.DEAD
    expected = [
        (Event.ENQUEUED, ok),
        (Event.CLAIMED, ok),
        (Event.SUCCEEDED, ok),
        (Event.SKIPPED, ok),
        (Event.ENQUEUED, fatal),
        (Event.CLAIMED, fatal),
        (Event.DEAD, fatal),
        (Event.ENQUEUED, retried),
        (Event.CLAIMED, retried),
        (Event.RETRY, retried),
        (Event.DEAD, poison),
    ]
    assert before == expected
    assert after == expected
    delete_queues(REDIS_URL, [queue])


# -- one rule for every producer ------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("api")
    yield from serve(tmp, api_env(pg_url, REDIS_URL, tmp))


BAD_PAYLOADS = [
    pytest.param({"n": 1, "note": "a\x00b"}, id="nul"),
    pytest.param({"n": 2**70}, id="int-beyond-64-bits"),
    pytest.param({"n": -1}, id="schema"),
]


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
@pytest.mark.parametrize("payload", BAD_PAYLOADS)
def test_a_bad_payload_is_the_same_error_from_the_client_the_cli_and_the_api(
    app: ConveyorApp, env: dict[str, str], api: Api, payload: dict[str, Any]
) -> None:
    with pytest.raises(PayloadInvalid) as refused:
        enqueue("demo.work", payload, app=app)
    message = str(refused.value)

    cli = run_cli("enqueue", "demo.work", json.dumps(payload), env=env)
    assert cli.returncode != 0
    assert message in cli.stderr

    token = api.key("enqueue")
    answer = api.client(token).post("/v1/jobs", json={"task": "demo.work", "payload": payload})
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    if problem["type"] == "urn:conveyor:problem:invalid-payload":  # the job's schema
        assert problem["detail"] == message
    else:  # what no ledger can store: a body error naming the field, in the same words
        assert problem["type"] == "urn:conveyor:problem:invalid-body"
        rule = message.split(" is invalid: ", 1)[1]
        assert [error["detail"] for error in problem["errors"]] == [f"Value error, {rule}"]


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_a_reused_key_with_another_payload_is_the_same_conflict_everywhere(
    app: ConveyorApp, env: dict[str, str], api: Api, queue: str
) -> None:
    key = f"key-{uuid.uuid4().hex[:10]}"
    first = enqueue("demo.work", {"n": 1}, idempotency_key=key, queue=queue, app=app)
    assert enqueue("demo.work", {"n": 1}, idempotency_key=key, queue=queue, app=app) == first
    with pytest.raises(IdempotencyConflict) as conflict:
        enqueue("demo.work", {"n": 2}, idempotency_key=key, queue=queue, app=app)
    message = str(conflict.value)
    with pytest.raises(IdempotencyConflict):
        enqueue("test.sleep", {"s": 0}, idempotency_key=key, queue=queue, app=app)

    cli = run_cli("enqueue", "demo.work", '{"n": 2}', "--key", key, "--queue", queue, env=env)
    assert cli.returncode != 0
    assert message in cli.stderr

    client = api.client(api.key("enqueue"))
    answer = client.post(
        "/v1/jobs",
        json={"task": "demo.work", "payload": {"n": 2}, "queue": queue},
        headers={"Idempotency-Key": key},
    )
    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"] == message
    same = client.post(
        "/v1/jobs",
        json={"task": "demo.work", "payload": {"n": 1}, "queue": queue},
        headers={"Idempotency-Key": key},
    )
    assert (same.status_code, same.json()["id"]) == (202, first)
    delete_queues(REDIS_URL, [queue])


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_an_unknown_task_is_the_same_error_from_the_client_and_the_api(
    app: ConveyorApp, api: Api
) -> None:
    with pytest.raises(UnknownTask) as refused:
        enqueue("no.such.task", {}, app=app)
    answer = api.client(api.key("enqueue")).post(
        "/v1/jobs", json={"task": "no.such.task", "payload": {}}
    )
    assert answer.status_code == 422
    named = "unknown task 'no.such.task'"
    assert str(refused.value).startswith(named)
    assert answer.json()["detail"].startswith(named)
