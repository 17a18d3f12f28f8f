"""Planted secrets: the real services accept unique random credentials, real processes run
on them, and not one of them shows up anywhere.

PostgreSQL gets a role with a random password (owning a database of its own), Redis an ACL
user, RabbitMQ a user on the ``/`` vhost; the Sentry DSN has a random key (pointed at a
stand-in for Sentry), and Flower a random password; an API key is made. Most reach the
processes as ``*_FILE`` files, the way Docker and Kubernetes mount secrets, the others as
variables. Then the API, a worker, a relay, Flower and the read commands of the CLI run
on them, also with a broker and a ledger that are down (URLs to a closed port, each with a
password of its own) so the error paths run; a job fails quoting every secret of the
worker's settings (tests/secret_jobs.py), so it is dead-lettered and reported to Sentry.

Every captured output is searched for every secret: each process's log, every CLI
command's stdout and stderr, every HTTP body and its headers, every envelope Sentry got,
the processes' command lines, a job's message and the dead letter on the broker, the
request a webhook job made, and every row of the ledger. PostgreSQL here trusts loopback
connections, so it does not check the role's password; the URL carries it through every
code path all the same.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import redis
from kombu.connection import Connection
from psycopg import sql

from conveyor.config.settings import sqlalchemy_url
from conveyor.worker.api.keys import Scope, create_key
from conveyor.worker.constants import dead_letter_queue
from conveyor.worker.ledger import Ledger
from conveyor.worker.migrate import upgrade
from tests.conftest import (
    AMQP_URL,
    MANAGEMENT_API_URL,
    PG_ADMIN_URL,
    REDIS_URL,
    Processes,
    delete_queues,
    run_cli,
    wait_for,
)
from tests.integration.test_api_harness import free_port, start_api
from tests.integration.test_sentry import PROJECT_ID, FakeSentry, envelope_items

pytestmark = pytest.mark.integration

JOB = "secrets.quote_settings"


def planted() -> str:
    """A secret no text could hold by chance."""
    return secrets.token_hex(16)


def netloc(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


@pytest.fixture
def pg_role() -> Iterator[str]:
    """A PostgreSQL role with a random password and a new database it owns; its URL.
    Both are dropped afterwards."""
    name = f"conveyor_secrets_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password := planted())
            )
        )
        try:
            admin.execute(sql.SQL("CREATE DATABASE {0} OWNER {0}").format(sql.Identifier(name)))
            yield f"postgresql://{name}:{password}@{netloc(PG_ADMIN_URL)}/{name}"
        finally:
            drop = "DROP DATABASE IF EXISTS {} WITH (FORCE)"
            admin.execute(sql.SQL(drop).format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def redis_user() -> Iterator[str]:
    """A Redis ACL user with a random password, on the tests' Redis database; its URL."""
    name = f"conveyor-secrets-{uuid.uuid4().hex[:10]}"
    password = planted()
    client = redis.Redis.from_url(REDIS_URL)
    client.acl_setuser(
        name,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        categories=["+@all"],
    )
    try:
        yield f"redis://{name}:{password}@{netloc(REDIS_URL)}{urlsplit(REDIS_URL).path}"
    finally:
        client.acl_deluser(name)
        client.close()


@pytest.fixture
def rabbit_user() -> Iterator[str]:
    """A RabbitMQ user with a random password and every permission on ``/``; its URL."""
    name = f"conveyor-secrets-{uuid.uuid4().hex[:10]}"
    password = planted()
    with httpx.Client(base_url=MANAGEMENT_API_URL, timeout=10) as api:
        api.put(f"users/{name}", json={"password": password, "tags": ""}).raise_for_status()
        try:
            grant = {"configure": ".*", "write": ".*", "read": ".*"}
            api.put(f"permissions/%2F/{name}", json=grant).raise_for_status()
            yield f"amqp://{name}:{password}@{netloc(AMQP_URL)}//"
        finally:
            api.delete(f"users/{name}")


@pytest.fixture
def fake_sentry() -> Iterator[FakeSentry]:
    yield from FakeSentry.serving()


@pytest.fixture
def queue(processes: Processes) -> Iterator[str]:
    """The worker's queue (and ``Q-idle``, which nobody consumes); deleted afterwards with
    their dead-letter queues, once the processes have stopped (a worker whose queue is
    deleted under it declares it again)."""
    name = f"test-secrets-{uuid.uuid4().hex[:10]}"
    yield name
    processes.stop_all()
    delete_queues(AMQP_URL, [name, f"{name}-idle"])


class Receiver:
    """An HTTP endpoint on loopback that keeps every request it gets, headers and body
    (where a webhook job delivers)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        kept = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                kept.append(str(self.headers).encode() + b"\n" + body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    thread = threading.Thread(target=made.server.serve_forever, daemon=True)
    thread.start()
    yield made
    made.server.shutdown()
    made.server.server_close()


@dataclass
class Search:
    """Every place searched, by name, and the secrets to look for in each."""

    secrets: dict[str, list[str]]
    """A secret's name -> the forms it is looked for in."""
    places: dict[str, bytes] = field(default_factory=dict)

    def add(self, name: str, text: str | bytes) -> None:
        self.places[name] = text.encode() if isinstance(text, str) else text

    def response(self, name: str, answer: httpx.Response) -> httpx.Response:
        self.add(f"http {name}", f"{answer.headers}\n{answer.text}")
        return answer

    def found(self) -> list[str]:
        return [
            f"{secret} in {place}"
            for place, text in self.places.items()
            for secret, forms in self.secrets.items()
            if any(form.encode() in text for form in forms)
        ]


def secret_file(folder: Path, name: str, value: str) -> str:
    path = folder / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def test_no_planted_secret_appears_in_any_log_output_body_or_event(
    tmp_path: Path,
    processes: Processes,
    pg_role: str,
    redis_user: str,
    rabbit_user: str,
    fake_sentry: FakeSentry,
    receiver: Receiver,
    queue: str,
) -> None:
    sentry_key, flower_password, metrics_token = planted(), planted(), planted()
    api_password, down_broker_password, down_ledger_password = planted(), planted(), planted()
    port = fake_sentry.server.server_address[1]
    dsn = f"http://{sentry_key}@127.0.0.1:{port}/{PROJECT_ID}"
    files = tmp_path / "secrets"
    files.mkdir()
    # A management-API user that does not exist: every call answers 401.
    broker_api = f"http://nobody:{api_password}@{netloc(MANAGEMENT_API_URL)}/api/"
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env = {
        **base,
        "CONVEYOR_ENV": "secrets-test",
        "CONVEYOR_DATA_DIR": str(tmp_path / "var"),
        "CONVEYOR_TASK_MODULES": "tests.secret_jobs,conveyor.tasks.webhooks",
        "CONVEYOR_RELAY_IN_WORKERS": "false",
        "CONVEYOR_LOG_LEVEL": "DEBUG",  # the most lines, the most chances to leak
        "CONVEYOR_BROKER_URL_FILE": secret_file(files, "broker_url", rabbit_user),
        "CONVEYOR_DATABASE_URL_FILE": secret_file(files, "database_url", pg_role),
        "CONVEYOR_BROKER_API_URL_FILE": secret_file(files, "broker_api_url", broker_api),
        "CONVEYOR_METRICS_TOKEN_FILE": secret_file(files, "metrics_token", metrics_token),
        "CONVEYOR_FLOWER_PASSWORD_FILE": secret_file(files, "flower_password", flower_password),
        "CONVEYOR_FLOWER_USER": "ops",
        "CONVEYOR_SENTRY_DSN": dsn,  # a variable, not a file: both ways are searched
    }
    closed = free_port()  # nothing listens there
    user = urlsplit(rabbit_user).username
    down_broker = f"amqp://{user}:{down_broker_password}@127.0.0.1:{closed}//"
    role = urlsplit(pg_role)
    down_ledger = f"postgresql://{role.username}:{down_ledger_password}@127.0.0.1:{closed}/x"
    broker_down = env | {"CONVEYOR_BROKER_URL_FILE": secret_file(files, "down", down_broker)}
    ledger_down = env | {"CONVEYOR_DATABASE_URL_FILE": secret_file(files, "down_db", down_ledger)}
    on_redis = {k: v for k, v in env.items() if k != "CONVEYOR_BROKER_URL_FILE"}
    on_redis["CONVEYOR_BROKER_URL"] = redis_user  # a variable again

    upgrade(sqlalchemy_url(pg_role))
    ledger = Ledger(sqlalchemy_url(pg_role), pool_size=1)
    _, token = create_key(ledger, "secrets-test", [Scope.ADMIN])
    ledger.dispose()
    search = Search(
        {
            "the PostgreSQL role's password": [role.password or ""],
            "the RabbitMQ user's password": [urlsplit(rabbit_user).password or ""],
            "the Redis user's password": [urlsplit(redis_user).password or ""],
            "the management API's password": [api_password],
            "the down broker's password": [down_broker_password],
            "the down ledger's password": [down_ledger_password],
            "the Sentry DSN's key": [sentry_key],
            "Flower's password": [flower_password],
            "the metrics token": [metrics_token],
            "the API key": [token, token.split("_", 2)[2]],
        }
    )
    assert all(all(forms) for forms in search.secrets.values())

    # The worker, Flower and the API on the planted credentials; the relay's broker is down.
    node = f"{queue}@secrets"
    ports = {name: free_port() for name in ("worker", "relay", "flower")}
    worker_args = ["-Q", queue, "-c", "1", "-n", node, "--metrics-port", str(ports["worker"])]
    processes.start(env, "worker", *worker_args)
    processes.start(broker_down, "relay", "--poll", "0.5", "--metrics-port", str(ports["relay"]))
    processes.start(env | {"CONVEYOR_FLOWER_PORT": str(ports["flower"])}, "flower")
    api = start_api(processes, env)
    worker_log = processes.tmp_path / "worker-0.log"
    wait_for(lambda: f"{node} ready." in worker_log.read_text(), timeout_s=60)
    flower = f"http://127.0.0.1:{ports['flower']}"
    wait_for(lambda: up(f"{flower}/healthcheck"), timeout_s=60)
    for index, process in enumerate(processes.started):
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        search.add(f"command line of process {index}", cmdline)

    client = api.client(token)
    accepted = search.response("POST /v1/jobs", client.post("/v1/jobs", json=job_request(queue)))
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    hook = {"url": receiver.url, "body": {"n": 1}}
    delivery = {"task": "webhooks.deliver", "payload": hook, "queue": queue}
    hook_id = search.response("POST /v1/jobs (webhook)", client.post("/v1/jobs", json=delivery))
    idle = client.post("/v1/jobs", json=job_request(f"{queue}-idle"))  # stays on the broker
    assert search.response("POST /v1/jobs (idle)", idle).status_code == 202
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["state"] == "dead", timeout_s=60)
    hook_job = f"/v1/jobs/{hook_id.json()['id']}"
    wait_for(lambda: client.get(hook_job).json()["state"] == "succeeded", timeout_s=60)
    assert len(receiver.requests) == 1
    search.add("the webhook's request", receiver.requests[0])

    ran = run_commands(
        search,
        [  # the command, where it runs, its environment, the exit code it must end with
            ("apikey list", "", env, 0),
            ("queues", "", env, 0),
            ("dlq list --json", "", env, 0),
            (f"dlq show {job_id}", "", env, 0),  # with the traceback
            ("health", "on Redis", on_redis, 0),  # 0: the Redis ACL user got in
            ("health", "with the broker down", broker_down, 1),
            ("dlq list", "with the ledger down", ledger_down, 1),
        ],
    )
    assert "broker: failed" in ran[-2].stdout
    assert "cannot reach the ledger database" in ran[-1].stderr

    readiness = search.response("api /readyz", httpx.get(f"{api.base_url}/readyz"))
    assert readiness.status_code == 200, readiness.text
    job = search.response("GET /v1/jobs/ID", client.get(f"/v1/jobs/{job_id}")).json()
    assert job["error"]["message"].startswith("cannot connect with ***")  # quoted, then masked
    search.response("GET /v1/dead-letters", client.get("/v1/dead-letters"))
    bearer = {"Authorization": f"Bearer {metrics_token}"}
    search.response("api /metrics", httpx.get(f"{api.base_url}/metrics", headers=bearer))
    search.response("api without a key", httpx.get(f"{api.base_url}/v1/jobs"))
    for name, ready in (("worker", 200), ("relay", 503)):
        probe = f"http://127.0.0.1:{ports[name]}"
        answer = search.response(f"{name} /readyz", httpx.get(f"{probe}/readyz", timeout=10))
        assert answer.status_code == ready, answer.text
        # The relay's scrape asks the management API (401) and the broker (down).
        scrape = httpx.get(f"{probe}/metrics", headers=bearer, timeout=30)
        assert search.response(f"{name} /metrics", scrape).status_code == 200
    basic = ("ops", flower_password)
    for path in ("/", "/broker", "/api/workers?refresh=1", "/metrics"):
        search.response(f"flower {path}", httpx.get(f"{flower}{path}", auth=basic, timeout=30))
    assert search.response("flower without a login", httpx.get(flower)).status_code == 401

    wait_for(lambda: events_of(fake_sentry, job_id), timeout_s=20)
    api.close()
    processes.stop_all()  # SIGTERM: logs complete, Sentry's SDK flushed
    for log in sorted(processes.tmp_path.glob("*.log")):
        search.add(f"log {log.name}", log.read_bytes())
    relay_log = (processes.tmp_path / "relay-1.log").read_text()
    assert "broker.management_api_failed" in relay_log  # the path that quoted its URL ran
    search_sentry(search, fake_sentry, sentry_key)
    (event,) = events_of(fake_sentry, job_id)
    assert event["exception"]["values"][0]["value"].startswith("cannot connect with ***")
    assert search_queue(search, rabbit_user, dead_letter_queue(queue)) == 1
    assert search_queue(search, rabbit_user, f"{queue}-idle") == 1
    search_ledger(search, pg_role)

    found = search.found()
    print(  # the counts, for the run's report (`-s` or `-rA`)
        f"planted {len(search.secrets)} secrets; searched {len(search.places)} places, "
        f"{sum(map(len, search.places.values()))} bytes; found {len(found)}"
    )
    assert not found, "\n".join(found)


Command = tuple[str, str, dict[str, str], int]


def run_commands(search: Search, commands: list[Command]) -> list[CompletedProcess[str]]:
    """Run the ``conveyor`` commands, four at a time; check each one's exit code and add
    its stdout and stderr to the search."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        ran = list(pool.map(lambda command: run_cli(*command[0].split(), env=command[2]), commands))
    for (command, where, _, status), result in zip(commands, ran, strict=True):
        label = f"conveyor {command} {where}".rstrip()
        assert result.returncode == status, (label, result.stdout, result.stderr)
        search.add(f"{label}: stdout", result.stdout)
        search.add(f"{label}: stderr", result.stderr)
    return ran


def job_request(queue: str) -> dict[str, Any]:
    return {"task": JOB, "payload": {}, "queue": queue}


def up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def events_of(sentry: FakeSentry, job_id: str) -> list[dict[str, Any]]:
    return [event for event in sentry.events() if event.get("tags", {}).get("job_id") == job_id]


def search_sentry(search: Search, sentry: FakeSentry, key: str) -> None:
    """Each envelope as Sentry got it, less the one place the protocol needs the DSN's key:
    the envelope header's ``trace.public_key`` (it goes in ``X-Sentry-Auth`` too)."""
    with sentry.lock:
        envelopes = list(sentry.envelopes)
    assert envelopes
    for index, envelope in enumerate(envelopes):
        head, _, items = envelope.partition(b"\n")
        header = json.loads(head)
        if header.get("trace", {}).get("public_key") == key:
            del header["trace"]["public_key"]
        search.add(f"sentry envelope {index}", json.dumps(header).encode() + b"\n" + items)
        for number, (item, payload) in enumerate(envelope_items(envelope)):
            search.add(f"sentry envelope {index} item {number} ({item.get('type')})", payload)


def search_queue(search: Search, broker_url: str, queue: str) -> int:
    """Take every message off ``queue`` and search its headers and body; how many."""
    taken = 0
    with Connection(broker_url) as connection:
        bound = connection.SimpleQueue(queue)
        while True:
            try:
                message = bound.get(block=True, timeout=0.5 if taken else 5)
            except bound.Empty:
                break
            search.add(f"message {taken} on {queue}", f"{message.headers}\n{message.body!r}")
            message.ack()
            taken += 1
        bound.close()
    return taken


def search_ledger(search: Search, url: str) -> None:
    """Every row of every table of the ledger, as text."""
    with psycopg.connect(url) as connection:
        tables = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        for (table,) in tables:
            rows = connection.execute(
                sql.SQL("SELECT t::text FROM {} AS t").format(sql.Identifier(table))
            ).fetchall()
            search.add(f"ledger table {table}", "\n".join(row for (row,) in rows))
    assert any(name.startswith("ledger table conveyor_jobs") for name in search.places)
