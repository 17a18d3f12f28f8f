"""`conveyor flower` as operators run it: a real Flower process watching a real worker.

One worker and one Flower per broker serve the whole module (starting them is
the slow part), on a ledger of their own. Flower must answer only with credentials
(`/healthcheck` aside: it says "OK"), list the worker and the jobs it ran, count their
events on `/metrics`, and show queue lengths with the dead-letter queues. It must tell the
truth about each outcome (worker/runtime.py's table): a dead letter is a FAILURE with its
error type, a scheduled retry is a RETRY until the retried attempt succeeds, a duplicate
delivery is no second success; each message is acknowledged, and a dead letter is still
one Sentry event. Without credentials, `conveyor flower` must refuse to start before it
connects to anything.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from conveyor.config import load_settings
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.client import enqueue, get_job
from conveyor.worker.constants import dead_letter_queue
from conveyor.worker.models import JobState
from tests.conftest import (
    BROKERS,
    TEST_JOBS,
    Processes,
    create_ledger,
    delete_queues,
    drop_database,
    metric_samples,
    metric_value,
    queued_messages,
    run_cli,
    state_of,
    wait_for,
)
from tests.integration.test_sentry import FakeSentry

pytestmark = pytest.mark.integration

USER = "ops"
PASSWORD = "flower-test-secret"
MANAGEMENT_API_URL = os.environ.get(
    "CONVEYOR_TEST_RABBITMQ_API_URL", "http://guest:guest@127.0.0.1:15672/api/"
)
UNREACHABLE_BROKER = "redis://127.0.0.1:9/0"  # nothing listens: the checks must come first


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True, kw_only=True)
class FlowerStack:
    """A worker on its own queue, and `conveyor flower` watching it."""

    broker: str
    base_url: str
    worker: str
    queue: str
    outcomes_queue: str
    """The worker's second queue: the outcome tests' jobs, whose dead letters must not
    change the dead-letter queue length that test_queue_lengths_... counts."""
    app: ConveyorApp
    flower: subprocess.Popen[bytes]
    log: Path
    sentry: FakeSentry | None

    def get(self, path: str, *, auth: tuple[str, str] | None = (USER, PASSWORD)) -> httpx.Response:
        return httpx.get(f"{self.base_url}{path}", auth=auth, timeout=10)


def flower_env(
    broker: str, pg_url: str, data_dir: Path, port: int, *, sentry_dsn: str | None = None
) -> dict[str, str]:
    """What `conveyor flower` and `conveyor worker` get: this broker, that ledger."""
    env = {
        **os.environ,
        "CONVEYOR_BROKER_URL": BROKERS[broker],
        "CONVEYOR_DATABASE_URL": pg_url,
        "CONVEYOR_DATA_DIR": str(data_dir),
        "CONVEYOR_TASK_MODULES": TEST_JOBS,
        "CONVEYOR_RELAY_IN_WORKERS": "false",  # the session ledger: see conveyor_env
        "CONVEYOR_FLOWER_USER": USER,
        "CONVEYOR_FLOWER_PASSWORD": PASSWORD,
        "CONVEYOR_FLOWER_PORT": str(port),
    }
    if broker == "rabbitmq":
        env["CONVEYOR_BROKER_API_URL"] = MANAGEMENT_API_URL
    if sentry_dsn is not None:
        env["CONVEYOR_SENTRY_DSN"] = sentry_dsn
    return env


def wait_until_up(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait for Flower's `/healthcheck`; fail with Flower's log if the process died."""

    def up() -> bool:
        if process.poll() is not None:
            pytest.fail(f"conveyor flower exited with {process.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(f"{base_url}/healthcheck", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout_s=60)


@contextmanager
def flower_stack(
    broker: str, tmp: Path, pg_url: str | None = None, *, sentry: FakeSentry | None = None
) -> Iterator[FlowerStack]:
    """Start a worker and `conveyor flower` on ``broker``; stop both and drop the queues.

    Without ``pg_url`` they get a ledger of their own (dropped after), so the worker's
    relay can run and publish retries when due: it serves only this stack's jobs. With
    ``sentry``, the worker reports to it.
    """
    queue = f"test-flower-{uuid.uuid4().hex[:10]}"
    outcomes_queue = f"{queue}-outcomes"
    node = f"{queue}@flower-test"
    port = free_port()
    own_ledger = pg_url is None
    pg_url = create_ledger("conveyor_flower") if pg_url is None else pg_url
    env = flower_env(broker, pg_url, tmp / "var", port, sentry_dsn=sentry.dsn if sentry else None)
    if own_ledger:
        env["CONVEYOR_RELAY_IN_WORKERS"] = "true"  # no other test's jobs in this ledger
    app = create_app(
        load_settings(
            broker_url=BROKERS[broker],
            database_url=pg_url,
            data_dir=tmp / "var",
            task_modules=[TEST_JOBS],
        )
    )
    processes = Processes(tmp)
    try:
        queues = f"{queue},{outcomes_queue}"
        processes.start(env, "worker", "-Q", queues, "-c", "1", "-n", node, "--loglevel", "INFO")
        worker_log = tmp / "worker-0.log"
        # Workers send task events only once a monitor asks: Flower asks the workers that
        # run when it starts (then every 5 s), so the worker is up before Flower starts.
        wait_for(lambda: f"{node} ready." in worker_log.read_text(), timeout_s=60)
        flower = processes.start(env, "flower")
        stack = FlowerStack(
            broker=broker,
            base_url=f"http://127.0.0.1:{port}",
            worker=node,
            queue=queue,
            outcomes_queue=outcomes_queue,
            app=app,
            flower=flower,
            log=tmp / "flower-1.log",
            sentry=sentry,
        )
        wait_until_up(stack.base_url, flower, stack.log)
        wait_for(lambda: node in stack.get("/api/workers?refresh=1").json(), timeout_s=60)
        wait_for(lambda: "Events of group {task} enabled" in worker_log.read_text(), timeout_s=30)
        yield stack
    finally:
        processes.stop_all()
        delete_queues(BROKERS[broker], [queue, outcomes_queue], pg_url=pg_url)
        app.ledger.dispose()
        app.close()
        if own_ledger:
            drop_database(pg_url)


@pytest.fixture(scope="module")
def sentry() -> Iterator[FakeSentry]:
    """Sentry's ingest endpoint for the module's workers (see test_sentry.py)."""
    yield from FakeSentry.serving()


@pytest.fixture(scope="module", params=sorted(BROKERS))
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sentry: FakeSentry
) -> Iterator[FlowerStack]:
    broker = str(request.param)
    tmp = tmp_path_factory.mktemp(f"flower-{broker}")
    with flower_stack(broker, tmp, sentry=sentry) as started:
        yield started


@pytest.fixture(scope="module")
def finished_job(stack: FlowerStack) -> str:
    """A `test.count` job the stack's worker ran to success, after Flower started."""
    job_id = enqueue("test.count", {"counter": stack.queue}, queue=stack.queue, app=stack.app)
    wait_for(lambda: state_of(stack.app, job_id) == JobState.SUCCEEDED, timeout_s=60)
    return job_id


def test_api_lists_the_worker_and_its_finished_job(stack: FlowerStack, finished_job: str) -> None:
    workers = stack.get("/api/workers").json()
    assert stack.worker in workers, sorted(workers)

    def task() -> dict[str, Any] | None:
        found: dict[str, Any] | None = stack.get("/api/tasks").json().get(finished_job)
        return found if found and found.get("state") == "SUCCESS" else None

    seen = wait_for(task, timeout_s=30)
    assert (seen["name"], seen["worker"]) == ("test.count", stack.worker)


@pytest.mark.parametrize(
    "path", ["/api/workers", "/api/tasks", "/api/queues/length", "/workers", "/tasks", "/broker"]
)
def test_api_and_pages_refuse_requests_without_credentials(stack: FlowerStack, path: str) -> None:
    assert stack.get(path, auth=None).status_code == 401
    assert stack.get(path, auth=(USER, "wrong")).status_code == 401
    assert stack.get(path).status_code == 200


def test_nobody_sends_tasks_without_credentials(stack: FlowerStack) -> None:
    sent = httpx.post(
        f"{stack.base_url}/api/task/send-task/test.count",
        json={"kwargs": {"counter": stack.queue}, "queue": stack.queue},
        timeout=10,
    )
    assert sent.status_code == 401


def test_the_password_is_not_on_flowers_command_line(stack: FlowerStack) -> None:
    command_line = Path(f"/proc/{stack.flower.pid}/cmdline").read_bytes().split(b"\0")
    assert b"flower" in command_line
    assert not [arg for arg in command_line if PASSWORD.encode() in arg], command_line


def test_metrics_count_the_jobs_events_for_a_logged_in_scraper_only(
    stack: FlowerStack, finished_job: str
) -> None:
    assert stack.get("/metrics", auth=None).status_code == 401
    pattern = re.compile(
        r'^flower_events_total\{(?=[^}]*task="test\.count")(?=[^}]*type="task-succeeded")'
        rf'(?=[^}}]*worker="{re.escape(stack.worker)}")[^}}]*\}} (\d+\.\d+)$',
        re.MULTILINE,
    )

    def succeeded() -> float | None:
        response = stack.get("/metrics")
        assert response.status_code == 200
        match = pattern.search(response.text)
        return float(match.group(1)) if match else None

    assert wait_for(succeeded, timeout_s=30) >= 1


def test_queue_lengths_include_dead_letter_queues(stack: FlowerStack) -> None:
    if stack.broker == "rabbitmq":
        try:
            httpx.get(MANAGEMENT_API_URL + "overview", timeout=2).raise_for_status()
        except httpx.HTTPError as exc:
            pytest.skip(
                f"RabbitMQ management API unreachable ({exc}): "
                "`rabbitmq-plugins enable rabbitmq_management`"
            )
    job_id = enqueue(
        "test.gated", {"gate": stack.queue, "fatal": True}, queue=stack.queue, app=stack.app
    )
    wait_for(lambda: state_of(stack.app, job_id) == JobState.DEAD, timeout_s=60)
    dead = dead_letter_queue(stack.queue)

    def lengths() -> dict[str, int | None] | None:
        queues = stack.get("/api/queues/length").json()["active_queues"]
        found = {queue["name"]: queue.get("messages") for queue in queues}
        return found if found.get(dead) == 1 else None

    found = wait_for(lengths, timeout_s=30)
    assert found[stack.queue] == 0
    if stack.broker == "redis":
        # Conveyor's own queues are listed even with no worker on them. (RabbitMQ's API
        # reports only queues that exist, and the shared broker may have no `default`.)
        assert {"default", "default.dead"} <= set(found), sorted(found)


def flower_task(stack: FlowerStack, job_id: str) -> dict[str, Any] | None:
    """Flower's view of one task (`/api/task/info/ID`), or None while it has none."""
    response = stack.get(f"/api/task/info/{job_id}")
    return response.json() if response.status_code == 200 else None


def flower_state(stack: FlowerStack, job_id: str, state: str) -> dict[str, Any] | None:
    """Flower's view of the task once it is in ``state`` (for ``wait_for``), else None."""
    task = flower_task(stack, job_id)
    return task if task is not None and task["state"] == state else None


def unacked(stack: FlowerStack, queue: str) -> int:
    """Messages of ``queue`` delivered to a worker and not yet acknowledged, as the broker
    counts them now (RabbitMQ's management API lags by seconds: rabbitmqctl does not)."""
    if stack.broker == "redis":
        client = redis.Redis.from_url(BROKERS["redis"])
        try:
            return sum(json.loads(value)[-1] == queue for _, value in client.hscan_iter("unacked"))
        finally:
            client.close()
    listed = subprocess.run(
        [
            "rabbitmqctl",
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_unacknowledged",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    counts = dict(line.split() for line in listed.splitlines() if line.strip())
    return int(counts.get(queue, 0))


def succeeded_events(stack: FlowerStack, task: str) -> float:
    """Flower's count of `task-succeeded` events of ``task`` from the stack's worker."""
    samples = metric_samples(stack.get("/metrics").text)
    labels = {"task": task, "type": "task-succeeded", "worker": stack.worker}
    return metric_value(samples, "flower_events_total", **labels)


def sentry_events_of(stack: FlowerStack, job_id: str) -> list[dict[str, Any]]:
    """The Sentry events about ``job_id``: Conveyor's (tag ``job_id``) and any that Sentry's
    Celery integration made (tag ``celery_task_id``)."""
    assert stack.sentry is not None, "the stack reports to no Sentry"
    return [
        event
        for event in stack.sentry.events()
        if job_id
        in (event.get("tags", {}).get("job_id"), event.get("tags", {}).get("celery_task_id"))
    ]


def test_a_dead_letter_is_a_failure_with_its_error_type_and_one_sentry_event(
    stack: FlowerStack,
) -> None:
    queue = stack.outcomes_queue
    secret = f"sk_live_{uuid.uuid4().hex}"
    fatal = enqueue("test.gated", {"gate": secret, "fatal": True}, queue=queue, app=stack.app)
    seen = wait_for(lambda: flower_state(stack, fatal, "FAILURE"), timeout_s=60)
    assert state_of(stack.app, fatal) == JobState.DEAD
    assert "conveyor.worker.errors.Fatal" in seen["exception"], seen
    assert "dead-lettered (fatal)" in seen["exception"], seen
    # Flower shows the payload (kwargs) to its users, but Celery's log and the task's span
    # get the exception too: it names the error's type, never its message.
    assert secret not in seen["exception"] + (seen["traceback"] or ""), seen
    # Exhausted: a RETRY first (the relay republishes it), then the FAILURE.
    exhausted = enqueue("test.gated", {"gate": secret}, queue=queue, app=stack.app)
    seen = wait_for(lambda: flower_state(stack, exhausted, "FAILURE"), timeout_s=60)
    assert "builtins.RuntimeError" in seen["exception"], seen
    assert "dead-lettered (exhausted)" in seen["exception"], seen
    assert get_job(exhausted, app=stack.app).attempts == 2
    wait_for(lambda: unacked(stack, queue) == 0, timeout_s=10)  # both acknowledged

    # One pool process reports them in order, through one FIFO sender: once the second
    # dead letter's event is in, whatever the first one caused is in too.
    wait_for(lambda: sentry_events_of(stack, exhausted), timeout_s=30)
    (event,) = sentry_events_of(stack, fatal)
    assert event["tags"]["reason"] == "fatal"
    assert event["exception"]["values"][0]["type"] == "Fatal"
    events = stack.sentry.events() if stack.sentry is not None else []
    reported = [value["type"] for e in events for value in e["exception"]["values"]]
    assert "DeadLettered" not in reported, reported


def test_a_scheduled_retry_shows_retry_until_the_retried_attempt_succeeds(
    stack: FlowerStack,
) -> None:
    queue = stack.outcomes_queue
    job_id = enqueue("test.retry_after", {"delay_s": 4}, queue=queue, app=stack.app)

    def retry_while_scheduled() -> dict[str, Any] | None:
        seen = flower_state(stack, job_id, "RETRY")
        return seen if seen and state_of(stack.app, job_id) == JobState.SCHEDULED else None

    seen = wait_for(retry_while_scheduled, timeout_s=30)
    assert "conveyor.worker.errors.RetryAfter" in seen["exception"], seen
    assert "attempt 1 of 3 failed" in seen["exception"], seen
    # Acknowledged while it waits in the ledger: Celery republished nothing.
    wait_for(lambda: unacked(stack, queue) == 0, timeout_s=2)
    assert state_of(stack.app, job_id) == JobState.SCHEDULED

    done = wait_for(lambda: flower_state(stack, job_id, "SUCCESS"), timeout_s=60)
    assert done["result"] == "2"  # the attempt that finished
    assert get_job(job_id, app=stack.app).attempts == 2
    wait_for(lambda: unacked(stack, queue) == 0, timeout_s=10)


def test_a_duplicate_delivery_is_not_a_second_success(
    stack: FlowerStack, finished_job: str
) -> None:
    first = wait_for(lambda: flower_state(stack, finished_job, "SUCCESS"), timeout_s=30)
    before = succeeded_events(stack, "test.count")
    # The same message again (same id), as a broker redelivers it or a producer retries.
    stack.app.send_task(
        "test.count", kwargs={"counter": stack.queue}, task_id=finished_job, queue=stack.queue
    )
    # The worker took it (Flower saw it start again) and skipped it.
    wait_for(
        lambda: (flower_task(stack, finished_job) or first)["started"] != first["started"],
        timeout_s=30,
    )
    # A job after it, on the same worker: its events come after the duplicate's.
    later = enqueue("test.count", {"counter": stack.queue}, queue=stack.queue, app=stack.app)
    wait_for(lambda: flower_state(stack, later, "SUCCESS"), timeout_s=60)

    again = flower_state(stack, finished_job, "SUCCESS")
    assert again is not None, flower_task(stack, finished_job)
    assert again["succeeded"] == first["succeeded"]  # no second task-succeeded event
    wait_for(lambda: succeeded_events(stack, "test.count") == before + 1, timeout_s=10)
    assert get_job(finished_job, app=stack.app).attempts == 1
    wait_for(lambda: unacked(stack, stack.queue) == 0, timeout_s=10)


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOWER_")}
    return {
        **env,
        "CONVEYOR_BROKER_URL": UNREACHABLE_BROKER,
        "CONVEYOR_DATA_DIR": str(tmp_path / "var"),
        **extra,
    }


@pytest.mark.parametrize(
    ("extra", "args", "message"),
    [
        ({}, [], "CONVEYOR_FLOWER_USER and CONVEYOR_FLOWER_PASSWORD must be set"),
        ({"CONVEYOR_FLOWER_USER": USER}, [], "CONVEYOR_FLOWER_PASSWORD must be set"),
        ({}, ["--local-dev", "--address", "0.0.0.0"], "only on a loopback address"),
        (
            {
                "CONVEYOR_FLOWER_USER": USER,
                "CONVEYOR_FLOWER_PASSWORD": PASSWORD,
                "FLOWER_UNAUTHENTICATED_API": "true",
            },
            [],
            "FLOWER_UNAUTHENTICATED_API is set",
        ),
    ],
    ids=["no-credentials", "no-password", "local-dev-off-loopback", "unauthenticated-api"],
)
def test_refuses_to_start_open_to_anyone(
    tmp_path: Path, extra: dict[str, str], args: list[str], message: str
) -> None:
    result = run_cli("flower", *args, env=cli_env(tmp_path, **extra), timeout_s=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("conveyor: error: "), result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "var").exists(), "it prepared to run before refusing"


def test_local_dev_serves_loopback_without_credentials_and_saves_its_state(
    tmp_path: Path, pg_url: str
) -> None:
    port = free_port()
    env = flower_env("redis", pg_url, tmp_path / "var", port)
    del env["CONVEYOR_FLOWER_USER"], env["CONVEYOR_FLOWER_PASSWORD"]
    processes = Processes(tmp_path)
    try:
        flower = processes.start(env, "flower", "--local-dev", "--address", "127.0.0.1")
        log = tmp_path / "flower-0.log"
        base_url = f"http://127.0.0.1:{port}"
        wait_until_up(base_url, flower, log)
        assert httpx.get(f"{base_url}/workers", timeout=10).status_code == 200
        # Without credentials Flower keeps its REST API closed: only the pages open up.
        assert httpx.get(f"{base_url}/api/workers", timeout=10).status_code == 401
        flower.send_signal(signal.SIGTERM)
        assert flower.wait(30) == 0
    finally:
        processes.stop_all()
    assert "conveyor: warning: --local-dev" in log.read_text()
    saved = sorted(path.name for path in (tmp_path / "var").glob("flower.db*"))
    assert saved, "no state file under CONVEYOR_DATA_DIR"


def test_a_read_only_flower_refuses_every_change_and_still_shows(
    tmp_path: Path, pg_url: str
) -> None:
    port = free_port()
    queue = f"test-flower-ro-{uuid.uuid4().hex[:8]}"
    env = flower_env("redis", pg_url, tmp_path / "var", port)
    processes = Processes(tmp_path)
    base_url = f"http://127.0.0.1:{port}"
    auth = (USER, PASSWORD)
    try:
        flower = processes.start(env, "flower", "--read-only", "--no-persistent")
        wait_until_up(base_url, flower, tmp_path / "flower-0.log")
        assert httpx.get(f"{base_url}/api/workers", auth=auth, timeout=10).status_code == 200
        assert httpx.get(f"{base_url}/tasks", auth=auth, timeout=10).status_code == 200
        changes = [
            (f"/api/task/send-task/test.count?queue={queue}", {"kwargs": {"counter": "x"}}),
            (f"/api/task/async-apply/test.count?queue={queue}", {"kwargs": {"counter": "x"}}),
            ("/api/task/revoke/some-id?terminate=true", {}),
            ("/api/worker/shutdown/anyone@anywhere", {}),
            ("/api/worker/pool/grow/anyone@anywhere?n=4", {}),
        ]
        for path, body in changes:
            answer = httpx.post(f"{base_url}{path}", json=body, auth=auth, timeout=10)
            assert answer.status_code == 403, (path, answer.status_code, answer.text)
        assert queued_messages(BROKERS["redis"], queue) == 0  # nothing was sent
    finally:
        processes.stop_all()
        delete_queues(BROKERS["redis"], [queue])
