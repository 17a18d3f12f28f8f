"""Dead-letter triage over HTTP: list, get, replay one, replay and purge by filter, audit.

Jobs die for real on a real worker (``test.gated`` with ``fatal``); replays go through a
real relay and run again on that worker.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import psycopg
import pytest

from tests.conftest import (
    REDIS_URL,
    ProcessFactory,
    WorkerFactory,
    delete_queues,
    run_cli,
    wait_for,
)
from tests.integration.test_api_harness import Api, api_env, assert_problem, serve

pytestmark = pytest.mark.integration

FATAL = "conveyor.worker.errors.Fatal"


@pytest.fixture(scope="module")
def api(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("api-dlq")
    yield from serve(tmp, api_env(pg_url, REDIS_URL, tmp))


@pytest.fixture
def dlq_queue(pg_url: str) -> Iterator[str]:
    name = f"test-api-dlq-{uuid.uuid4().hex[:10]}"
    yield name
    delete_queues(REDIS_URL, [name], pg_url=pg_url)


def set_gate(pg_url: str, name: str, value: int) -> None:
    with psycopg.connect(pg_url) as connection:
        connection.execute(
            "INSERT INTO conveyor_test_counters (name, value) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            (name, value),
        )


def state(client: Any, job_id: str) -> str:
    return str(client.get(f"/v1/jobs/{job_id}").json().get("state"))


def has_state(client: Any, job_id: str, expected: str) -> bool:
    return state(client, job_id) == expected


def test_dead_letters_are_listed_read_replayed_and_purged_with_an_audit_trail(
    api: Api,
    dlq_queue: str,
    pg_url: str,
    start_worker: WorkerFactory,
    start_relay: ProcessFactory,
) -> None:
    start_worker(api.env, dlq_queue)
    start_relay(api.env)
    admin_name = f"triage-{uuid.uuid4().hex[:8]}"
    admin = api.client(api.key("admin", name=admin_name))
    reader = api.client(api.key("read"))
    gate = f"gate-{uuid.uuid4().hex[:8]}"
    set_gate(pg_url, gate, 0)

    def enqueue(gate_name: str) -> str:
        job = {"task": "test.gated", "payload": {"gate": gate_name, "fatal": True}}
        response = admin.post("/v1/jobs", json={**job, "queue": dlq_queue})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    openable, doomed, also_doomed = enqueue(gate), enqueue("no-such-gate"), enqueue("no-such-gate")
    for job_id in (openable, doomed, also_doomed):
        wait_for(partial(has_state, admin, job_id, "dead"))

    listed = reader.get("/v1/dead-letters", params={"queue": dlq_queue}).json()["items"]
    assert {letter["id"] for letter in listed} == {openable, doomed, also_doomed}
    assert all(letter["error_type"] == FATAL and letter["reason"] == "fatal" for letter in listed)
    assert all("traceback" not in letter for letter in listed)
    narrowed = {
        "queue": dlq_queue,
        "task": "test.gated",
        "error_type": FATAL,
        "since": listed[0]["dead_at"],
        "until": "2999-01-01T00:00:00Z",
    }
    assert len(reader.get("/v1/dead-letters", params=narrowed).json()["items"]) == 3
    other_error = {"queue": dlq_queue, "error_type": "builtins.RuntimeError"}
    assert reader.get("/v1/dead-letters", params=other_error).json()["items"] == []
    one = reader.get("/v1/dead-letters", params={"queue": dlq_queue, "limit": 1}).json()
    assert len(one["items"]) == 1

    letter = reader.get(f"/v1/dead-letters/{openable}").json()
    assert letter["payload"] == {"gate": gate, "fatal": True}
    assert letter["attempts"] == 1
    assert f"gate {gate} is closed" in letter["error_message"]
    assert "Fatal" in letter["traceback"]
    assert_problem(reader.get("/v1/dead-letters/no-such-job"), 404)
    assert_problem(reader.post(f"/v1/dead-letters/{openable}/replay"), 403, "insufficient-scope")

    set_gate(pg_url, gate, 1)
    replayed = admin.post(f"/v1/dead-letters/{openable}/replay")
    assert replayed.status_code == 200, replayed.text
    outcome = replayed.json()
    assert (outcome["action"], outcome["count"], outcome["job_ids"]) == ("replay", 1, [openable])
    assert outcome["removed_from_broker"] == 1
    (renewed,) = outcome["new_ids"]
    assert wait_for(lambda: state(admin, renewed) == "succeeded")
    assert_problem(admin.get(f"/v1/dead-letters/{openable}"), 404)
    assert_problem(admin.post(f"/v1/dead-letters/{openable}/replay"), 409, "already-replayed")
    assert_problem(admin.post("/v1/dead-letters/no-such-job/replay"), 404)

    assert_problem(admin.post("/v1/dead-letters/replay", json={}), 422, "empty-filter")
    assert_problem(
        admin.post("/v1/dead-letters/purge", json={"dry_run": True}), 422, "empty-filter"
    )
    dry = admin.post("/v1/dead-letters/replay", json={"queue": dlq_queue, "dry_run": True}).json()
    assert (dry["dry_run"], set(dry["job_ids"]), dry["new_ids"]) == (
        True,
        {doomed, also_doomed},
        [],
    )
    assert state(admin, doomed) == "dead"

    bulk = admin.post("/v1/dead-letters/replay", json={"ids": [doomed], "rate_per_s": 10}).json()
    assert bulk["job_ids"] == [doomed]
    (doomed_again,) = bulk["new_ids"]
    wait_for(lambda: state(admin, doomed_again) == "dead")  # it ran again, and died again

    would = admin.post("/v1/dead-letters/purge", json={"queue": dlq_queue, "dry_run": True}).json()
    assert set(would["job_ids"]) == {also_doomed, doomed_again}
    purged = admin.post("/v1/dead-letters/purge", json={"queue": dlq_queue}).json()
    assert (purged["action"], purged["dry_run"], purged["count"]) == ("purge", False, 2)
    assert set(purged["job_ids"]) == {also_doomed, doomed_again}
    assert purged["removed_from_broker"] == 2
    assert_problem(admin.get(f"/v1/jobs/{also_doomed}"), 404)
    assert reader.get("/v1/dead-letters", params={"queue": dlq_queue}).json()["items"] == []

    audit = run_cli("dlq", "audit", "--json", env=api.env)
    assert audit.returncode == 0, audit.stderr
    mine = [
        entry
        for entry in json.loads(audit.stdout)
        if set(entry["job_ids"]) & {openable, doomed, also_doomed, doomed_again}
    ]
    assert [(entry["action"], entry["count"]) for entry in mine] == [
        ("purge", 2),
        ("replay", 1),
        ("replay", 1),
    ]
    assert {entry["actor"] for entry in mine} == {f"apikey:{admin_name}"}
    assert mine[0]["filters"] == {"queue": dlq_queue}
