"""Dead letters on both brokers: poison messages, exhausted and fatal jobs, replay, purge."""

from __future__ import annotations

import json
import pickle
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.messaging import Producer

from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import enqueue, get_job
from conveyor.worker.deadletter import JOB_ID_HEADER, REASON_HEADER, dead_letter_destination
from conveyor.worker.models import JobState
from tests.conftest import (
    REDIS_URL,
    ProcessFactory,
    WorkerFactory,
    run_cli,
    state_of,
    wait_for,
)
from tests.jobs import counters

pytestmark = pytest.mark.integration


def is_state(app: ConveyorApp, job_id: str, state: JobState) -> bool:
    return state_of(app, job_id) == state


def dead_letters_on_broker(broker_url: str, queue: str) -> list[dict[str, Any]]:
    """Every message in ``queue``'s broker-side dead-letter queue (taken and requeued)."""
    found, taken = [], []
    with Connection(broker_url) as connection:
        bound = dead_letter_destination(queue).bind(connection.default_channel)
        bound.declare()
        while (message := bound.get(no_ack=False)) is not None:
            found.append({"headers": message.headers, "body": json.loads(message.body)})
            taken.append(message)
        for message in taken:
            message.requeue()
    return found


def publish_garbage(broker_url: str, queue: str) -> None:
    """Bytes that are not a Celery message, put straight onto the queue."""
    if broker_url.startswith("redis"):
        redis.Redis.from_url(REDIS_URL).lpush(queue, b"\xff\xfe not json {{")
        return
    with Connection(broker_url) as connection:
        Producer(connection.default_channel).publish(
            b"\xff\xfe not json {{",
            routing_key=queue,
            exchange="",
            declare=[Queue(queue, Exchange(queue), routing_key=queue)],  # as Celery declares it
            content_type="application/json",
            content_encoding="binary",
        )


class CreatesFile:
    """Unpickling this opens (so creates) ``path``: what a hostile pickle would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_poison_is_dead_lettered_with_its_reason_and_the_queue_keeps_flowing(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    broker_url: str,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    # The pickle below is real: loading it creates the file it names.
    probe, marker = tmp_path / "probe", tmp_path / "unpickled-by-the-worker"
    pickle.loads(pickle.dumps(CreatesFile(str(probe)))).close()  # noqa: S301 (the proof)
    assert probe.exists()
    worker = start_worker(env, queue)
    foreign = Celery("foreign", broker=broker_url)
    foreign.conf.accept_content = ["json", "pickle"]
    publish_garbage(broker_url, queue)
    unknown = foreign.send_task("no.such.task", kwargs={"a": 1}, queue=queue).id
    invalid = foreign.send_task("demo.work", kwargs={"n": -1}, queue=queue).id
    positional = foreign.send_task("demo.work", args=[3], queue=queue).id
    hostile = {"n": 1, "boom": CreatesFile(str(marker))}
    pickled = foreign.send_task("demo.work", kwargs=hostile, queue=queue, serializer="pickle").id
    # Valid messages the ledger cannot store: a job id longer than its column, a NUL.
    foreign.send_task("demo.work", kwargs={"n": 1}, queue=queue, task_id="x" * 100)
    foreign.send_task("demo.work", kwargs={"n": 1, "note": "a\x00b"}, queue=queue)
    valid = enqueue("demo.work", {"n": 9}, queue=queue, app=app)

    assert wait_for(lambda: state_of(app, valid) == JobState.SUCCEEDED)
    for job_id in (unknown, invalid, positional, pickled):
        wait_for(partial(is_state, app, job_id, JobState.DEAD))
    assert get_job(unknown, app=app).dead_reason == "unknown_task"
    assert get_job(unknown, app=app).task == "no.such.task"
    assert get_job(unknown, app=app).payload == {"a": 1}
    assert get_job(invalid, app=app).dead_reason == "invalid_payload"
    assert get_job(invalid, app=app).attempts == 1  # dead at once, no retries
    assert get_job(positional, app=app).dead_reason == "invalid_payload"
    assert "positional arguments" in (get_job(positional, app=app).error_message or "")
    assert get_job(pickled, app=app).dead_reason == "content_type"
    assert not marker.exists(), "the worker deserialized a pickle"

    letters = wait_for(lambda: rows if len(rows := dead_rows(env, queue)) == 7 else None)
    by_reason = {row["reason"]: row for row in letters}
    assert set(by_reason) == {
        *("undecodable", "unknown_task", "invalid_payload", "content_type", "invalid_message")
    }
    assert by_reason["undecodable"]["task"] == "?"
    unstorable = [row for row in letters if row["reason"] == "invalid_message"]
    assert len(unstorable) == 2
    assert all("cannot store this message" in row["error_message"] for row in unstorable)

    on_broker = wait_for(lambda: len(dead_letters_on_broker(broker_url, queue)) == 7 or None)
    assert on_broker
    messages = dead_letters_on_broker(broker_url, queue)
    assert {m["headers"][REASON_HEADER] for m in messages} == set(by_reason)
    invalid_letter = next(m for m in messages if m["headers"][JOB_ID_HEADER] == invalid)
    assert invalid_letter["body"]["payload"] == {"n": -1}
    assert invalid_letter["body"]["error_type"] == "conveyor.worker.errors.PayloadInvalid"
    assert worker.poll() is None  # the worker never crashed
    foreign.close()


def test_a_job_whose_own_statement_fails_follows_its_retry_policy(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    start_worker: WorkerFactory,
    start_relay: ProcessFactory,
) -> None:
    """Not mistaken for an unreachable ledger (which would put it back for ever)."""
    start_worker(env, queue)
    start_relay(env)
    job_id = enqueue("test.bad_sql", {}, queue=queue, app=app)
    assert wait_for(lambda: state_of(app, job_id) == JobState.DEAD, timeout_s=60)
    dead = get_job(job_id, app=app)
    assert (dead.dead_reason, dead.attempts) == ("exhausted", 2)
    assert dead.error_type == "sqlalchemy.exc.DataError"


def dead_rows(env: dict[str, str], queue: str) -> list[dict[str, Any]]:
    listed = run_cli("dlq", "list", "--queue", queue, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, Any]] = json.loads(listed.stdout)
    return rows


def new_gate(app: ConveyorApp) -> str:
    name = f"gate-{uuid.uuid4().hex[:8]}"
    with app.ledger.transaction() as session:
        session.execute(counters.insert().values(name=name, value=0))
    return name


def open_gate(app: ConveyorApp, name: str) -> None:
    with app.ledger.transaction() as session:
        session.execute(counters.update().where(counters.c.name == name).values(value=1))


def test_dead_jobs_keep_their_facts_then_replay_and_purge_are_audited(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    broker_url: str,
    start_worker: WorkerFactory,
    start_relay: ProcessFactory,
) -> None:
    start_worker(env, queue)
    start_relay(env)
    gate = new_gate(app)
    key = f"key-{queue}"
    exhausted = enqueue("test.gated", {"gate": gate}, queue=queue, idempotency_key=key, app=app)
    fatal = enqueue("test.gated", {"gate": gate, "fatal": True}, queue=queue, app=app)
    doomed = enqueue("test.gated", {"gate": "no-such-gate", "fatal": True}, queue=queue, app=app)
    for job_id in (exhausted, fatal, doomed):
        wait_for(partial(is_state, app, job_id, JobState.DEAD))

    # Three commands that change nothing, run side by side (each is a process start-up).
    with ThreadPoolExecutor(3) as pool:
        showing = pool.submit(run_cli, "dlq", "show", exhausted, "--json", env=env)
        dry_running = pool.submit(
            run_cli, "dlq", "replay", exhausted, fatal, "--dry-run", "--json", env=env
        )
        refusing = pool.submit(run_cli, "dlq", "replay", env=env)
        shown, dry, refused = showing.result(), dry_running.result(), refusing.result()
    assert shown.returncode == 0, shown.stderr
    letter = json.loads(shown.stdout)
    assert letter["reason"] == "exhausted"
    assert letter["attempts"] == 2
    assert letter["error_type"] == "builtins.RuntimeError"
    assert letter["payload"] == {"gate": gate}
    assert letter["idempotency_key"] == key
    assert "RuntimeError" in letter["traceback"]
    assert letter["dead_at"] >= letter["created_at"]

    assert json.loads(dry.stdout)["count"] == 2
    assert state_of(app, exhausted) == JobState.DEAD
    assert state_of(app, fatal) == JobState.DEAD
    assert refused.returncode == 1
    assert "pass --all" in refused.stderr

    open_gate(app, gate)
    replayed = run_cli("dlq", "replay", exhausted, fatal, "--rate", "50", "--json", env=env)
    assert replayed.returncode == 0, replayed.stderr
    outcome = json.loads(replayed.stdout)
    assert outcome["count"] == 2
    assert outcome["removed_from_broker"] == 2
    for old, new in zip(outcome["job_ids"], outcome["new_ids"], strict=True):
        wait_for(partial(is_state, app, new, JobState.SUCCEEDED))
        renewed = get_job(new, app=app)
        assert (renewed.replay_of, renewed.attempts, renewed.queue) == (old, 1, queue)
        assert get_job(old, app=app).replayed_as == new
    assert (
        get_job(outcome["new_ids"][outcome["job_ids"].index(exhausted)], app=app).idempotency_key
        == key
    )
    assert get_job(exhausted, app=app).idempotency_key is None

    purged = run_cli("dlq", "purge", "--queue", queue, "--json", env=env)
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout)["job_ids"] == [doomed]
    assert app.ledger.get(doomed) is None
    assert dead_letters_on_broker(broker_url, queue) == []

    audit = json.loads(run_cli("dlq", "audit", "--json", env=env).stdout)
    mine = [entry for entry in audit if set(entry["job_ids"]) & {exhausted, fatal, doomed}]
    assert [(e["action"], e["count"]) for e in mine] == [("purge", 1), ("replay", 2)]
    assert all("@" in e["actor"] for e in mine)
    assert mine[0]["filters"] == {"queue": queue}
