"""The HTTP API through a real `conveyor api` process: jobs, keys and scopes, errors.

Most tests share one server on Redis (the broker does not matter to them); the end-to-end
run on a real worker is on both brokers.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import psycopg
import pytest

from tests.conftest import (
    REDIS_URL,
    Processes,
    WorkerFactory,
    delete_queues,
    metric_samples,
    metric_value,
    queued_messages,
    run_cli,
    wait_for,
)
from tests.integration.test_api_harness import (
    Api,
    api_env,
    assert_problem,
    serve,
    start_api,
)

pytestmark = pytest.mark.integration

BODY_LIMIT_BYTES = 65_536
SECRET = "s3cret-payload-marker"


@pytest.fixture(scope="module")
def api(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("api")
    env = api_env(pg_url, REDIS_URL, tmp, api_max_body_bytes=str(BODY_LIMIT_BYTES))
    yield from serve(tmp, env)


@pytest.fixture(scope="module")
def keys(api: Api) -> dict[str, str]:
    """One token per scope, made with the real CLI."""
    return {scope: api.key(scope) for scope in ("read", "enqueue", "admin")}


@pytest.fixture
def api_queue(api: Api, pg_url: str) -> Iterator[str]:
    """A queue of this test's own on the shared Redis; deleted afterwards, with its jobs."""
    name = f"test-api-{uuid.uuid4().hex[:10]}"
    yield name
    delete_queues(REDIS_URL, [name], pg_url=pg_url)


def ledger_rows(pg_url: str, key: str) -> int:
    with psycopg.connect(pg_url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM conveyor_jobs WHERE idempotency_key = %s", (key,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_health_and_readiness_answer_without_a_key(api: Api) -> None:
    client = api.client()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"ledger": "ok", "broker": "ok"}}


ROUTES = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/some-id"),
    ("POST", "/v1/jobs/some-id/cancel"),
    ("GET", "/v1/dead-letters"),
    ("GET", "/v1/dead-letters/some-id"),
    ("POST", "/v1/dead-letters/some-id/replay"),
    ("POST", "/v1/dead-letters/replay"),
    ("POST", "/v1/dead-letters/purge"),
    ("GET", "/v1/queues"),
    ("POST", "/v1/queues/some-queue/pause"),
    ("POST", "/v1/queues/some-queue/resume"),
    ("GET", "/v1/catalog"),
]


def test_every_v1_route_refuses_a_missing_or_invalid_key(api: Api) -> None:
    unknown = "cvk_0123456789ab_" + "x" * 43
    for method, path in ROUTES:
        missing = api.client().request(method, path, json={})
        assert_problem(missing, 401)
        assert missing.headers["www-authenticate"] == "Bearer"
        for token in ("not-a-key", unknown):
            invalid = api.client(token).request(method, path, json={})
            assert assert_problem(invalid, 401)["detail"] == "the API key is not valid"
            assert invalid.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_each_scope_opens_its_own_routes(api: Api, keys: dict[str, str], api_queue: str) -> None:
    reader, enqueuer, admin = (api.client(keys[s]) for s in ("read", "enqueue", "admin"))
    job = {"task": "demo.work", "payload": {"n": 1}, "queue": api_queue, "delay_s": 3600}

    refused = reader.post("/v1/jobs", json=job)
    assert assert_problem(refused, 403, "insufficient-scope")["detail"] == (
        "this key lacks the 'enqueue' scope"
    )
    assert refused.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", scope="enqueue"'
    )
    created = enqueuer.post("/v1/jobs", json=job)
    assert created.status_code == 202
    job_id = created.json()["id"]
    read_paths = (f"/v1/jobs/{job_id}", "/v1/jobs", "/v1/dead-letters", "/v1/queues", "/v1/catalog")
    for path in read_paths:
        assert reader.get(path).status_code == 200
        assert_problem(enqueuer.get(path), 403, "insufficient-scope")
        assert admin.get(path).status_code == 200  # admin implies read
    for client in (reader, enqueuer):
        for path in ("/v1/dead-letters/replay", "/v1/dead-letters/purge"):
            assert_problem(client.post(path, json={"all": True}), 403, "insufficient-scope")
        assert_problem(client.post("/v1/dead-letters/x/replay"), 403, "insufficient-scope")
    assert admin.post("/v1/dead-letters/purge", json={"queue": api_queue}).status_code == 200
    assert_problem(reader.post(f"/v1/jobs/{job_id}/cancel"), 403, "insufficient-scope")
    assert enqueuer.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    second = admin.post("/v1/jobs", json=job)  # admin implies enqueue
    assert second.status_code == 202
    assert admin.post(f"/v1/jobs/{second.json()['id']}/cancel").status_code == 200


def test_a_revoked_key_stops_working_and_tokens_are_never_shown_again(api: Api) -> None:
    name = f"revoke-me-{uuid.uuid4().hex[:8]}"
    client = api.client(api.key("read", name=name))
    assert client.get("/v1/queues").status_code == 200

    revoked = run_cli("apikey", "revoke", name, env=api.env)
    assert revoked.returncode == 0, revoked.stderr
    # At once (in every process: tests/integration/test_api_limits.py), where the key
    # cache alone would keep it for a minute.
    wait_for(lambda: client.get("/v1/queues").status_code == 401, timeout_s=10, every_s=0.1)
    assert assert_problem(client.get("/v1/queues"), 401)["detail"] == "the API key was revoked"

    listed = run_cli("apikey", "list", "--json", env=api.env)
    assert listed.returncode == 0, listed.stderr
    assert "cvk_" not in listed.stdout  # tokens are shown once, at creation, never again
    mine = next(key for key in json.loads(listed.stdout) if key["name"] == name)
    assert mine["revoked_at"] is not None
    assert mine["scopes"] == ["read"]
    again = run_cli("apikey", "revoke", name, env=api.env)
    assert "already revoked" in again.stdout
    assert run_cli("apikey", "revoke", "no-such-key", env=api.env).returncode == 1


def test_enqueue_answers_202_with_a_location_and_the_job_reads_back(
    api: Api, keys: dict[str, str], api_queue: str
) -> None:
    client = api.client(keys["admin"])
    created = client.post(
        "/v1/jobs",
        json={"task": "demo.work", "payload": {"n": 5}, "queue": api_queue, "priority": 3},
    )
    assert created.status_code == 202
    accepted = created.json()
    assert accepted["state"] == "queued"
    assert created.headers["location"] == f"/v1/jobs/{accepted['id']}"

    job = client.get(created.headers["location"]).json()
    assert job["id"] == accepted["id"]
    assert (job["task"], job["queue"], job["payload"], job["priority"]) == (
        "demo.work",
        api_queue,
        {"n": 5},
        3,
    )
    assert job["state"] == "queued"
    assert job["attempts"] == 0
    assert job["created_at"] == job["updated_at"]

    delayed = client.post(
        "/v1/jobs",
        json={"task": "demo.work", "payload": {"n": 6}, "queue": api_queue, "delay_s": 600},
    ).json()
    assert delayed["state"] == "scheduled"
    assert client.get(f"/v1/jobs/{delayed['id']}").json()["run_at"] is not None
    client.post(f"/v1/jobs/{delayed['id']}/cancel")


def test_an_idempotency_key_gives_one_job_and_refuses_another_payload(
    api: Api, keys: dict[str, str], api_queue: str, pg_url: str
) -> None:
    client = api.client(keys["enqueue"])
    key = f"order-{uuid.uuid4().hex}"
    job = {"task": "test.count", "payload": {"counter": "c1"}, "queue": api_queue, "delay_s": 600}
    headers = {"Idempotency-Key": key}

    first = client.post("/v1/jobs", json=job, headers=headers)
    again = client.post("/v1/jobs", json=job, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert ledger_rows(pg_url, key) == 1

    other_payload = client.post(
        "/v1/jobs", json={**job, "payload": {"counter": "c2"}}, headers=headers
    )
    assert_problem(other_payload, 409, "idempotency-key-reused")
    other_task = client.post("/v1/jobs", json={**job, "task": "test.sleep"}, headers=headers)
    assert_problem(other_task, 409, "idempotency-key-reused")
    assert ledger_rows(pg_url, key) == 1
    assert_problem(
        client.post("/v1/jobs", json=job, headers={"Idempotency-Key": ""}),
        400,
        "invalid-parameters",
    )
    client.post(f"/v1/jobs/{first.json()['id']}/cancel")


def test_a_batch_answers_each_job_as_post_v1_jobs_would(
    api: Api, keys: dict[str, str], api_queue: str, pg_url: str
) -> None:
    client = api.client(keys["enqueue"])
    key = f"batch-{uuid.uuid4().hex}"
    jobs = [
        {"task": "demo.work", "payload": {"n": 1}, "queue": api_queue},
        {"task": "no.such.task", "payload": {}, "queue": api_queue},
        {"task": "test.typed", "payload": {"count": -1}, "queue": api_queue},
        {"task": "test.count", "payload": {"counter": "b"}, "queue": api_queue, "delay_s": 600},
        {"task": "demo.work", "payload": {"n": 2}, "queue": api_queue, "idempotency_key": key},
        {"task": "demo.work", "payload": {"n": 2}, "queue": api_queue, "idempotency_key": key},
        {"task": "demo.work", "payload": {"n": 3}, "queue": api_queue, "idempotency_key": key},
    ]
    answer = client.post("/v1/jobs:batch", json={"jobs": jobs})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    items = body["items"]
    assert [item["status"] for item in items] == [202, 422, 422, 202, 202, 202, 409]
    assert (body["accepted"], body["refused"]) == (4, 3)
    assert [item["state"] for item in items if item["status"] == 202] == [
        "queued",
        "scheduled",
        "queued",
        "queued",
    ]
    assert items[4]["id"] == items[5]["id"]
    assert items[1]["problem"]["type"] == "urn:conveyor:problem:unknown-task"
    assert items[2]["problem"]["type"] == "urn:conveyor:problem:invalid-payload"
    assert items[6]["problem"]["type"] == "urn:conveyor:problem:idempotency-key-reused"
    assert ledger_rows(pg_url, key) == 1
    admin = api.client(keys["admin"])
    for item in items:
        if item["status"] == 202:
            assert admin.get(f"/v1/jobs/{item['id']}").json()["queue"] == api_queue
    wait_for(lambda: queued_messages(REDIS_URL, api_queue) == 2, timeout_s=10, every_s=0.05)

    assert_problem(client.post("/v1/jobs:batch", json={"jobs": []}), 422, "invalid-body")
    too_many = [{"task": "demo.work", "payload": {"n": n}} for n in range(501)]
    over = assert_problem(
        client.post("/v1/jobs:batch", json={"jobs": too_many}), 413, "batch-too-large"
    )
    assert over["detail"] == "the batch has 501 jobs; the limit is 500"  # CONVEYOR_API_MAX_BATCH
    one_bad = [jobs[0], {"task": "demo.work", "payload": {}, "priority": 10}]
    refused = assert_problem(
        client.post("/v1/jobs:batch", json={"jobs": one_bad}), 422, "invalid-body"
    )
    assert [error["field"] for error in cast(list[Any], refused["errors"])] == ["jobs.1.priority"]
    assert queued_messages(REDIS_URL, api_queue) == 2  # a refused body enqueued nothing
    reader = api.client(keys["read"])
    denied = reader.post("/v1/jobs:batch", json={"jobs": jobs[:1]})
    assert_problem(denied, 403, "insufficient-scope")


def test_malformed_oversized_and_invalid_requests_get_their_status(
    api: Api, keys: dict[str, str], api_queue: str
) -> None:
    client = api.client(keys["admin"])
    json_headers = {"Content-Type": "application/json"}

    assert_problem(
        client.post("/v1/jobs", content=b'{"task": ', headers=json_headers), 400, "malformed-json"
    )
    bad_query = assert_problem(
        client.get("/v1/jobs?limit=0&state=bogus"), 400, "invalid-parameters"
    )
    assert {(e["location"], e["field"]) for e in bad_query["errors"]} == {  # type: ignore[attr-defined]
        ("query", "limit"),
        ("query", "state"),
    }
    assert_problem(client.get("/v1/jobs?cursor=not-a-cursor"), 400, "invalid-cursor")
    assert_problem(client.get("/v1/dead-letters?since=yesterday"), 400, "invalid-parameters")

    big = b'{"task": "demo.work", "payload": {"pad": "' + b"x" * BODY_LIMIT_BYTES + b'"}}'
    assert_problem(client.post("/v1/jobs", content=big, headers=json_headers), 413)
    chunked = client.post("/v1/jobs", content=iter([big[:1000], big[1000:]]), headers=json_headers)
    assert "content-length" not in chunked.request.headers  # read as it came: no length given
    assert_problem(chunked, 413)

    job = b'{"task": "demo.work", "payload": {"n": 1}}'
    assert_problem(
        client.post("/v1/jobs", content=job, headers={"Content-Type": "text/plain"}), 415
    )
    assert_problem(client.post("/v1/jobs", content=job), 415)

    unknown = assert_problem(
        client.post("/v1/jobs", json={"task": "no.such.task", "payload": {}}), 422, "unknown-task"
    )
    assert "no.such.task" in str(unknown["detail"])
    invalid = client.post(
        "/v1/jobs", json={"task": "demo.work", "payload": {"n": -1, "note": SECRET}}
    )
    assert_problem(invalid, 422, "invalid-payload")
    assert SECRET not in invalid.text
    shape = assert_problem(
        client.post(
            "/v1/jobs",
            json={"task": "demo.work", "payload": {"n": SECRET}, "priority": 10, "when": 1},
        ),
        422,
        "invalid-body",
    )
    fields = {error["field"]: error for error in shape["errors"]}  # type: ignore[attr-defined]
    assert set(fields) == {"priority", "when"}
    assert SECRET not in str(shape)
    not_storable = client.post(
        "/v1/jobs", content=b'{"task": "demo.work", "payload": {"n": NaN}}', headers=json_headers
    )
    assert_problem(not_storable, 422, "invalid-body")

    assert_problem(client.get("/v1/jobs/no-such-job"), 404)
    assert_problem(client.get("/v1/no-such-route"), 404)
    wrong_method = client.delete("/v1/jobs")
    assert_problem(wrong_method, 405)
    assert wrong_method.headers["allow"] == "GET, POST"
    assert SECRET not in api.log.read_text()


def test_cancel_stops_a_job_that_has_not_started(
    api: Api, keys: dict[str, str], api_queue: str
) -> None:
    client = api.client(keys["enqueue"])
    job = {"task": "demo.work", "payload": {"n": 2}, "queue": api_queue, "delay_s": 600}
    job_id = client.post("/v1/jobs", json=job).json()["id"]

    cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    again = assert_problem(client.post(f"/v1/jobs/{job_id}/cancel"), 409, "not-cancellable")
    assert again["state"] == "cancelled"
    assert_problem(client.post("/v1/jobs/no-such-job/cancel"), 404)


def test_cursor_pages_are_newest_first_without_gaps_or_repeats(
    api: Api, keys: dict[str, str], api_queue: str
) -> None:
    client = api.client(keys["admin"])
    created = [
        client.post(
            "/v1/jobs",
            json={
                "task": "test.count",
                "payload": {"counter": str(n)},
                "queue": api_queue,
                "delay_s": 600 if n % 2 else None,
            },
        ).json()["id"]
        for n in range(25)
    ]
    newest_first = list(reversed(created))

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"queue": api_queue, "limit": 10}
        if cursor is not None:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["items"]]
        pages += 1
        if pages == 1:  # jobs added while paging must not shift the pages that follow
            for n in range(3):
                client.post(
                    "/v1/jobs",
                    json={
                        "task": "test.count",
                        "payload": {"counter": f"late{n}"},
                        "queue": api_queue,
                        "delay_s": 600,
                    },
                )
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == newest_first

    scheduled = client.get(
        "/v1/jobs", params={"queue": api_queue, "state": "scheduled", "limit": 500}
    )
    assert len(scheduled.json()["items"]) == 12 + 3
    first = client.get(f"/v1/jobs/{created[0]}").json()["created_at"]
    last = client.get(f"/v1/jobs/{created[-1]}").json()["created_at"]
    window = client.get(
        "/v1/jobs",
        params={"queue": api_queue, "created_after": first, "created_before": last, "limit": 500},
    ).json()["items"]
    assert [job["id"] for job in window] == newest_first[1:-1]
    by_task = client.get("/v1/jobs", params={"queue": api_queue, "task": "demo.work"}).json()
    assert by_task == {"items": [], "next_cursor": None}


def test_queues_show_depth_age_and_relay_lag(
    api: Api, keys: dict[str, str], api_queue: str
) -> None:
    client = api.client(keys["admin"])
    for n in range(2):
        client.post("/v1/jobs", json={"task": "demo.work", "payload": {"n": n}, "queue": api_queue})
    due = client.post(
        "/v1/jobs",
        json={"task": "demo.work", "payload": {"n": 9}, "queue": api_queue, "delay_s": 0.01},
    ).json()["id"]
    time.sleep(0.5)  # no relay runs here: the due job waits, and the lag grows

    view = client.get("/v1/queues").json()
    mine = next(stats for stats in view["queues"] if stats["name"] == api_queue)
    assert (mine["depth"], mine["running"], mine["scheduled"], mine["dead"]) == (2, 0, 1, 0)
    assert mine["oldest_queued_age_s"] >= 0.5
    assert view["relay_lag_s"] >= 0.45
    client.post(f"/v1/jobs/{due}/cancel")


def test_an_admin_pauses_and_resumes_a_queue_and_readers_see_it(
    api: Api, keys: dict[str, str], api_queue: str
) -> None:
    reader, admin = api.client(keys["read"]), api.client(keys["admin"])
    path = f"/v1/queues/{api_queue}"
    assert_problem(reader.post(f"{path}/pause"), 403, "insufficient-scope")
    paused = admin.post(f"{path}/pause", params={"reason": "maintenance"})
    assert paused.status_code == 200
    assert paused.json() == {"queue": api_queue, "paused": True, "changed": True}
    assert admin.post(f"{path}/pause").json()["changed"] is False
    listed = {q["name"]: q for q in reader.get("/v1/queues").json()["queues"]}
    assert listed[api_queue]["paused"] is True
    assert listed[api_queue]["depth"] == 0
    scraped = metric_samples(reader.get("/metrics").text)
    assert metric_value(scraped, "conveyor_queue_paused", queue=api_queue) == 1

    resumed = admin.post(f"{path}/resume")
    assert resumed.json() == {"queue": api_queue, "paused": False, "changed": True}
    assert admin.post(f"{path}/resume").json()["changed"] is False
    listed = {q["name"]: q for q in reader.get("/v1/queues").json()["queues"]}
    assert api_queue not in listed  # no job and no pause: nothing to list
    assert_problem(admin.post(f"/v1/queues/{'q' * 201}/pause"), 400, "invalid-parameters")


def test_metrics_count_enqueues_and_show_the_ledgers_queues_to_a_reader_only(
    api: Api, keys: dict[str, str], api_queue: str
) -> None:
    assert_problem(api.client().get("/metrics"), 401)
    assert_problem(api.client("cvk_not-a-key").get("/metrics"), 401)
    writer = api.client(keys["enqueue"])
    assert_problem(writer.get("/metrics"), 403, "insufficient-scope")
    for n in range(3):
        created = writer.post(
            "/v1/jobs", json={"task": "demo.work", "payload": {"n": n}, "queue": api_queue}
        )
        assert created.status_code == 202
    scraped = api.client(keys["read"]).get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    samples = metric_samples(scraped.text)
    enqueued = metric_value(
        samples, "conveyor_jobs_enqueued_total", task="demo.work", queue=api_queue
    )
    assert enqueued == 3
    assert metric_value(samples, "conveyor_queue_jobs", queue=api_queue, state="queued") == 3
    assert metric_value(samples, "conveyor_queue_oldest_job_age_seconds", queue=api_queue) > 0


def test_a_job_enqueued_over_http_runs_on_a_real_worker(
    env: dict[str, str],
    queue: str,
    processes: Processes,
    start_worker: WorkerFactory,
) -> None:
    server = start_api(processes, env)
    client = server.client(server.key("enqueue", "read"))
    start_worker(env, queue)

    created = client.post(
        "/v1/jobs", json={"task": "demo.work", "payload": {"n": 4}, "queue": queue}
    )
    assert created.status_code == 202
    location = created.headers["location"]
    done = wait_for(lambda: (job := client.get(location).json())["state"] == "succeeded" and job)
    assert done["result"] == {"n": 4, "square": 16, "attempt": 1}
    assert done["attempts"] == 1

    running = client.post(
        "/v1/jobs", json={"task": "test.sleep", "payload": {"s": 1.5}, "queue": queue}
    ).json()["id"]
    wait_for(lambda: client.get(f"/v1/jobs/{running}").json()["state"] == "running", every_s=0.05)
    refused = assert_problem(client.post(f"/v1/jobs/{running}/cancel"), 409, "not-cancellable")
    assert refused["state"] == "running"  # a running job is not interrupted...
    assert wait_for(lambda: client.get(f"/v1/jobs/{running}").json()["state"] == "succeeded")
    server.close()
