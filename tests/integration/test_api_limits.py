"""Limits that hold across API processes, and limits on what any producer may enqueue.

Two `conveyor api` processes share one ledger database of this module's own: a revocation
in one reaches both at once, a key's rate is spent once across both, each kind of route
has its bucket, and an address that fails to authenticate too often is refused by both
(the console's sign-in included). The payload limits are checked on each producer path
(Python client, CLI, HTTP API) and by the worker, for messages from any producer.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import httpx
import pytest
from celery import Celery

from conveyor.worker.admission import PayloadTooLarge
from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import enqueue, get_job
from conveyor.worker.errors import PayloadInvalid
from conveyor.worker.migrate import upgrade
from conveyor.worker.models import JobState
from tests.conftest import (
    REDIS_URL,
    Processes,
    WorkerFactory,
    create_database,
    delete_queues,
    drop_database,
    run_cli,
    state_of,
    wait_for,
)
from tests.integration.test_api_harness import Api, api_env, assert_problem, start_api
from tests.integration.test_dead_letters import dead_letters_on_broker

pytestmark = pytest.mark.integration

ENQUEUE_RATE_PER_S = 0.5
"""Burst of one, then one every 2 s: a second enqueue soon after the first is refused."""
FAILURES_PER_MIN = 6
"""Six failures at once, then one every 10 s."""
MAX_PAYLOAD_BYTES = 2_048
MAX_DEPTH = 5
MAX_BATCH = 3


@dataclass
class Pair:
    """Two API processes on one ledger."""

    one: Api
    two: Api

    def key(self, *scopes: str, name: str | None = None) -> str:
        return self.one.key(*scopes, name=name)


@pytest.fixture(scope="module")
def ledger_url() -> Iterator[str]:
    url = create_database("conveyor_api_limits")
    upgrade(url.replace("postgresql://", "postgresql+psycopg://"))
    yield url
    drop_database(url)


@pytest.fixture(scope="module")
def pair(ledger_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("api-limits")
    env = api_env(
        ledger_url,
        REDIS_URL,
        tmp,
        api_rate_limit_per_s="1000",
        api_enqueue_rate_per_s=str(ENQUEUE_RATE_PER_S),
        api_auth_failures_per_min=str(FAILURES_PER_MIN),
        api_max_batch=str(MAX_BATCH),
        max_payload_bytes=str(MAX_PAYLOAD_BYTES),
        max_payload_depth=str(MAX_DEPTH),
    )
    processes = Processes(tmp)
    one, two = start_api(processes, env), start_api(processes, env)
    yield Pair(one, two)
    one.close()
    two.close()
    processes.stop_all()


@pytest.fixture
def api_queue(ledger_url: str) -> Iterator[str]:
    name = f"test-api-limits-{uuid.uuid4().hex[:10]}"
    yield name
    delete_queues(REDIS_URL, [name], pg_url=ledger_url)


def answers_401(client: httpx.Client) -> bool:
    return client.get("/v1/queues").status_code == 401


def test_a_revoked_key_stops_at_once_in_every_process(pair: Pair) -> None:
    name = f"revoke-{uuid.uuid4().hex[:8]}"
    token = pair.key("read", name=name)
    clients = [pair.one.client(token), pair.two.client(token)]
    for client in clients:  # each process has now cached the key (for up to 60 s)
        assert client.get("/v1/queues").status_code == 200
        assert client.get("/v1/queues").status_code == 200

    revoked = run_cli("apikey", "revoke", name, env=pair.one.env)
    assert revoked.returncode == 0, revoked.stderr
    for client in clients:
        # Seconds, where the cache alone would have answered 200 for a minute.
        wait_for(partial(answers_401, client), timeout_s=10)
        problem = assert_problem(client.get("/v1/queues"), 401)
        assert problem["detail"] == "the API key was revoked"


def test_a_keys_rate_is_spent_once_across_processes(pair: Pair, api_queue: str) -> None:
    token = pair.key("enqueue", "read")
    one, two = pair.one.client(token), pair.two.client(token)
    job = {"task": "demo.work", "payload": {"n": 1}, "queue": api_queue}
    started = time.monotonic()
    answers = [client.post("/v1/jobs", json=job) for client in (one, two, one, two)]
    elapsed_s = time.monotonic() - started
    accepted = [answer for answer in answers if answer.status_code == 202]
    # One token at once, one more every 2 s, whichever process is asked: per-process
    # buckets would have let at least one through on each.
    assert 1 <= len(accepted) <= 1 + int(elapsed_s * ENQUEUE_RATE_PER_S)
    refused = next(answer for answer in answers if answer.status_code == 429)
    problem = assert_problem(refused, 429, "rate-limited")
    assert problem["detail"] == "this key may make 0.5 enqueue requests per second"
    assert int(refused.headers["retry-after"]) >= 1
    # The read routes have a bucket of their own: the enqueues did not spend it.
    assert all(client.get("/v1/queues").status_code == 200 for client in (one, two, one, two))


GUESSED_PREFIX = 0xABC000


def guess(i: int) -> str:
    """A well-formed token that no key has."""
    return f"cvk_{GUESSED_PREFIX + i:012x}_not-the-secret-{i}"


GUESSER = "127.0.0.2"
"""The address the failures come from: loopback, but a bucket of its own."""


def guesser(api: Api, token: str | None = None) -> httpx.Client:
    """A client of ``api`` from :data:`GUESSER`, with ``token`` as its key if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.HTTPTransport(local_address=GUESSER)
    client = httpx.Client(base_url=api.base_url, headers=headers, transport=transport)
    api.clients.append(client)
    return client


def failed_sign_in(api: Api) -> httpx.Response:
    """A console sign-in with a key that does not exist."""
    client = guesser(api)
    page = client.get("/console/login")
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    return client.post(
        "/console/login",
        data={"csrf_token": found.group(1), "api_key": guess(60)},
        follow_redirects=False,
    )


def test_failed_authentication_is_limited_per_address_in_every_process(pair: Pair) -> None:
    valid = pair.key("read")
    for i in range(FAILURES_PER_MIN):
        assert_problem(guesser(pair.one, guess(i)).get("/v1/queues"), 401)
    # Refused now for up to 10 s (until it earns a failure back), by either process,
    # before any token is looked at, even a valid one.
    refused = guesser(pair.two, guess(99)).get("/v1/queues")
    assert assert_problem(refused, 429, "rate-limited")["detail"] == (
        "too many failed authentications from this address"
    )
    assert int(refused.headers["retry-after"]) >= 1
    assert_problem(guesser(pair.two, valid).get("/v1/queues"), 429, "rate-limited")
    assert pair.two.client(valid).get("/v1/queues").status_code == 200  # other addresses
    # A missing key is not a guess: still a 401 that says what to send.
    assert_problem(guesser(pair.one).get("/v1/queues"), 401)
    # The console's sign-in counts in the same bucket, and is refused with it.
    blocked = failed_sign_in(pair.two)
    assert blocked.status_code == 429
    assert "too many failed sign-ins" in blocked.text

    # A failure earns back; a failed sign-in spends it, and the API refuses again.
    wait_for(lambda: failed_sign_in(pair.one).status_code == 401, timeout_s=60)
    assert_problem(guesser(pair.two, guess(98)).get("/v1/queues"), 429, "rate-limited")

    logged = pair.one.log.read_text() + pair.two.log.read_text()
    assert logged.count("api.auth_failed") >= FAILURES_PER_MIN
    assert "console.sign_in_failed" in logged
    assert "not-the-secret" not in logged  # never the token
    assert f"{GUESSED_PREFIX:012x}" in logged  # its public prefix, to tell the keys apart


def nested(depth: int) -> dict[str, object]:
    """A payload (of demo.work) whose objects nest ``depth`` deep below the payload."""
    inner: dict[str, object] = {}
    for _ in range(depth - 1):
        inner = {"in": inner}
    return {"n": 1, "in": inner}


def test_the_api_refuses_payloads_and_batches_over_the_limits(pair: Pair, api_queue: str) -> None:
    def job(payload: dict[str, object]) -> dict[str, object]:
        return {"task": "demo.work", "payload": payload, "queue": api_queue}

    def enqueuer() -> httpx.Client:  # a key per request: enqueues are 1 per 2 s per key
        return pair.one.client(pair.key("enqueue"))

    big = job({"blob": "x" * MAX_PAYLOAD_BYTES})
    problem = assert_problem(enqueuer().post("/v1/jobs", json=big), 413, "payload-too-large")
    assert f"the limit is {MAX_PAYLOAD_BYTES}" in str(problem["detail"])
    deep = assert_problem(
        enqueuer().post("/v1/jobs", json=job(nested(MAX_DEPTH))), 422, "invalid-payload"
    )
    assert f"nest at most {MAX_DEPTH} deep" in str(deep["detail"])

    mixed = enqueuer().post("/v1/jobs:batch", json={"jobs": [job({"n": 1}), big]})
    assert mixed.status_code == 200, mixed.text
    assert [item["status"] for item in mixed.json()["items"]] == [202, 413]

    batch = {"jobs": [job({"n": 1})] * (MAX_BATCH + 1)}
    too_many = assert_problem(enqueuer().post("/v1/jobs:batch", json=batch), 413, "batch-too-large")
    assert too_many["detail"] == f"the batch has {MAX_BATCH + 1} jobs; the limit is {MAX_BATCH}"


@pytest.fixture
def limited_app(app: ConveyorApp) -> ConveyorApp:
    """The test's producer app, with this module's payload limits."""
    app.settings = app.settings.model_copy(
        update={"max_payload_bytes": MAX_PAYLOAD_BYTES, "max_payload_depth": MAX_DEPTH}
    )
    return app


def test_the_client_and_cli_refuse_payloads_over_the_limits(
    limited_app: ConveyorApp, env: dict[str, str], queue: str
) -> None:
    with pytest.raises(PayloadTooLarge, match=f"the limit is {MAX_PAYLOAD_BYTES}"):
        enqueue("demo.work", {"blob": "x" * MAX_PAYLOAD_BYTES}, queue=queue, app=limited_app)
    with pytest.raises(PayloadInvalid, match=f"nest at most {MAX_DEPTH} deep"):
        enqueue("demo.work", nested(MAX_DEPTH), queue=queue, app=limited_app)
    assert enqueue("demo.work", nested(MAX_DEPTH - 1), queue=queue, app=limited_app)
    assert enqueue("demo.work", {"n": 1, "pad": "x" * 1000}, queue=queue, app=limited_app)

    limits = {**env, "CONVEYOR_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD_BYTES)}
    payload = '{"blob": "' + "x" * MAX_PAYLOAD_BYTES + '"}'
    refused = run_cli("enqueue", "demo.work", payload, "--queue", queue, env=limits)
    assert refused.returncode != 0
    assert f"the limit is {MAX_PAYLOAD_BYTES}" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_worker_dead_letters_an_oversized_message_from_any_producer(
    app: ConveyorApp,
    env: dict[str, str],
    queue: str,
    broker_url: str,
    start_worker: WorkerFactory,
) -> None:
    limit = 1_024  # the worker allows this much payload, and 64 KiB of envelope
    start_worker({**env, "CONVEYOR_MAX_PAYLOAD_BYTES": str(limit)}, queue)
    foreign = Celery("foreign", broker=broker_url)
    oversized = foreign.send_task(
        "demo.work", kwargs={"n": 1, "blob": "x" * (limit + 70_000)}, queue=queue
    ).id
    fits = foreign.send_task("demo.work", kwargs={"n": 2, "pad": "x" * 900}, queue=queue).id
    foreign.close()

    assert wait_for(partial(lambda job: state_of(app, job) == JobState.SUCCEEDED, fits))
    wait_for(lambda: state_of(app, oversized) == JobState.DEAD)
    dead = get_job(oversized, app=app)
    assert dead.dead_reason == "too_large"
    assert dead.attempts == 0  # never started
    assert dead.payload == {}  # never decoded
    assert "the limit is" in (dead.error_message or "")
    # The body itself is kept on the dead-letter queue: nothing is lost.
    letters = wait_for(lambda: dead_letters_on_broker(broker_url, queue) or None)
    assert len(letters) == 1
    assert "x" * (limit + 70_000) in json.dumps(letters[0]["body"])
