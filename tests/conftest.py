"""Shared fixtures: real PostgreSQL, Redis and RabbitMQ on loopback, real worker processes.

Nothing here mocks a broker or a database. Each test session gets a fresh PostgreSQL
database (dropped at the end); each test gets queues of its own, so tests never take
each other's messages on the shared brokers, and deletes them (with their dead-letter
queues and exchanges) afterwards.

The hooks at the end hold the suite to its tiers and its time budget (docs/testing.md):
every test carries exactly one of the tier markers, and a run that takes longer than
the budget says so in its summary.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, insert, select

from conveyor.config import load_settings
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.deadletter import dead_letter_destination
from conveyor.worker.migrate import upgrade
from conveyor.worker.models import JobState
from tests import jobs as test_jobs

PG_ADMIN_URL = os.environ.get(
    "CONVEYOR_TEST_PG_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
AMQP_URL = os.environ.get("CONVEYOR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
BROKERS = {"redis": REDIS_URL, "rabbitmq": AMQP_URL}
MANAGEMENT_API_URL = os.environ.get(
    "CONVEYOR_TEST_RABBITMQ_API_URL", "http://guest:guest@127.0.0.1:15672/api/"
)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _clean_environment() -> None:
    """Tests decide every CONVEYOR_* variable themselves."""
    for name in [name for name in os.environ if name.startswith("CONVEYOR_")]:
        if not name.startswith("CONVEYOR_TEST_"):
            del os.environ[name]


def create_database(prefix: str = "conveyor_test") -> str:
    """A new, empty PostgreSQL database; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


TEST_JOBS = "tests.jobs"


def create_ledger(prefix: str = "conveyor_test") -> str:
    """A new database, migrated, with the test jobs' tables; returns its URL. For tests whose
    queued rows must not reach the session's relays (drop it with :func:`drop_database`)."""
    url = create_database(prefix)
    driver_url = url.replace("postgresql://", "postgresql+psycopg://")
    upgrade(driver_url)
    engine = create_engine(driver_url)
    test_jobs.metadata.create_all(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated ledger database on the real PostgreSQL (plus the test jobs' tables)."""
    url = create_ledger()
    yield url
    drop_database(url)


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """An unmigrated database, for tests of `conveyor migrate` itself."""
    url = create_database("conveyor_empty")
    yield url
    drop_database(url)


@pytest.fixture(params=sorted(BROKERS))
def broker_url(request: pytest.FixtureRequest) -> str:
    return BROKERS[request.param]


UNFINISHED = ("queued", "scheduled", "running")


def retire_jobs(pg_url: str, queues: Iterable[str]) -> None:
    """Cancel the unfinished jobs a test left in ``queues`` of the session's ledger.

    Otherwise a later test's relay finds them (a `queued` job whose queue is empty for 30 s
    counts as stranded, a `scheduled` one comes due, a `running` one's lease runs out) and
    publishes them again, re-creating a queue that the test had deleted.
    """
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute(
            "UPDATE conveyor_jobs SET state = 'cancelled', run_at = NULL, updated_at = now() "
            "WHERE queue = ANY(%s) AND state = ANY(%s)",
            (list(queues), list(UNFINISHED)),
        )


def delete_queues(broker_url: str, names: Iterable[str], *, pg_url: str | None = None) -> None:
    """Delete queues a test made on a shared broker, with their dead-letter queues.

    With ``pg_url``, the queues' unfinished jobs in that ledger are cancelled first (see
    :func:`retire_jobs`). On Redis each queue is declared before it is deleted, bound to an
    exchange of its name: kombu's Redis transport deletes a queue's messages through the
    bindings this connection knows, and a fresh one knows none (Conveyor's queues are on
    the default exchange, which binds nothing). On RabbitMQ queues and the exchanges named
    after them (what Celery producers declare) are deleted by name.
    """
    names = list(names)
    if pg_url is not None:
        retire_jobs(pg_url, names)
    if broker_url.startswith("redis"):
        forget_unacked(broker_url, [*names, *(dead_letter_destination(n).name for n in names)])
    with Connection(broker_url) as connection:
        channel = connection.default_channel
        for name in names:
            for queue_name in (name, dead_letter_destination(name).name):
                if broker_url.startswith("redis"):
                    bound = Queue(queue_name, Exchange(queue_name), routing_key=queue_name)
                    bound.bind(channel).declare()
                    bound.bind(channel).delete()
                    continue
                # RabbitMQ deletes by name, whatever the queue was declared with (a
                # declaration with other arguments would fail with 406).
                channel.queue_delete(queue_name)
                channel.exchange_delete(queue_name)


def forget_unacked(redis_url: str, queues: Iterable[str]) -> int:
    """Drop what kombu's Redis transport still holds unacknowledged for ``queues``.

    A worker that is killed or stopped with messages in hand leaves them in the
    ``unacked`` hash (tag -> [message, exchange, routing key]); the next worker on that
    database puts them back on their queue once the visibility timeout has passed,
    re-creating a queue the test deleted. Returns how many were dropped.
    """
    wanted = set(queues)
    client = redis.Redis.from_url(redis_url)
    try:
        tags = []
        for tag, value in client.hscan_iter("unacked"):
            with suppress(ValueError, IndexError, TypeError):
                if json.loads(value)[-1] in wanted:
                    tags.append(tag)
        if tags:
            client.hdel("unacked", *tags)
            client.zrem("unacked_index", *tags)
        return len(tags)
    finally:
        client.close()


def queued_messages(broker_url: str, queue: str) -> int:
    """Messages waiting in ``queue``; 0 while the queue does not exist yet."""
    with Connection(broker_url) as connection:
        try:
            _, count, _ = connection.default_channel.queue_declare(queue, passive=True)
        except connection.channel_errors:
            return 0
    return int(count)


def drain_ids(broker_url: str, queue: str, *, wait: bool = True) -> list[str]:
    """Take every message off ``queue`` and return the job ids they carry; done once none
    came for a second (``wait=False``: once the queue is empty)."""
    ids = []
    with Connection(broker_url) as connection:
        bound = connection.SimpleQueue(queue)
        while True:
            try:
                message = bound.get(block=wait, timeout=1 if wait else None)
            except bound.Empty:
                break
            ids.append(message.headers["id"])
            message.ack()
        bound.close()
    return ids


def take_ids(broker_url: str, queue: str) -> list[str]:
    """Like :func:`drain_ids`, quicker, for a queue whose messages are all on the broker
    already (their publishers have stopped) and that nobody consumes.

    On RabbitMQ each message is taken with a non-blocking get until the queue is empty (a
    published message is in the queue once confirmed). On Redis a queue is one list per
    priority step, under the names kombu's channel gives them: each list is read and
    deleted in one transaction, instead of one round trip (or several) per message.
    """
    if not broker_url.startswith("redis"):
        return drain_ids(broker_url, queue, wait=False)
    with Connection(broker_url) as connection:
        channel: Any = connection.default_channel
        keys = [channel._q_for_pri(queue, step) for step in channel.priority_steps]
    client = redis.Redis.from_url(broker_url)
    try:
        with client.pipeline(transaction=True) as pipe:
            for key in dict.fromkeys(keys):
                pipe.lrange(key, 0, -1)
                pipe.delete(key)
            replies = pipe.execute()
    finally:
        client.close()
    return [json.loads(item)["headers"]["id"] for items in replies[::2] for item in items]


@pytest.fixture
def vhost_url() -> Iterator[str]:
    """A RabbitMQ vhost of this test's own, deleted afterwards with all it holds."""
    name = f"conveyor-test-{uuid.uuid4().hex[:10]}"
    with httpx.Client(base_url=MANAGEMENT_API_URL, timeout=10) as api:
        api.put(f"vhosts/{name}").raise_for_status()
        grant = {"configure": ".*", "write": ".*", "read": ".*"}
        api.put(f"permissions/{name}/guest", json=grant).raise_for_status()
        scheme_end = len("amqp://")
        yield AMQP_URL[: AMQP_URL.index("/", scheme_end)] + "/" + name
        api.delete(f"vhosts/{name}").raise_for_status()


@pytest.fixture
def queue(broker_url: str, pg_url: str) -> Iterator[str]:
    """A queue name no other test uses; deleted afterwards, with `Q.dead` and its jobs."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    delete_queues(broker_url, [name], pg_url=pg_url)


SHORT_LEASE_S = os.environ.get("CONVEYOR_TEST_JOB_LEASE_S", "3")
"""``CONVEYOR_JOB_LEASE_S`` for the workers of tests that wait for a killed or stopped
worker's job to come back: the relay recovers it 3 s after its last heartbeat instead of
the default 10 s. Three beats (0.9 s apart) fit in it, as in the default; tests that wait
for no lease keep the default, which the rest of the suite runs on.
``CONVEYOR_TEST_JOB_LEASE_S=10`` runs them with the default lease (to compare, or on a
machine too slow for 3 s)."""


def conveyor_env(broker_url: str, pg_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """Environment for `conveyor` subprocesses: a broker, a ledger, a data folder under
    ``data_dir``, the test jobs, and ``settings`` as ``CONVEYOR_<NAME>`` variables."""
    return {
        **os.environ,
        "CONVEYOR_BROKER_URL": broker_url,
        "CONVEYOR_DATABASE_URL": pg_url,
        "CONVEYOR_DATA_DIR": str(data_dir / "var"),
        "CONVEYOR_TASK_MODULES": TEST_JOBS,
        # Tests start relays themselves: a worker's own relay would serve every test's
        # jobs in the shared ledger, on its own broker (tests/integration/test_election.py
        # tests the workers' relay).
        "CONVEYOR_RELAY_IN_WORKERS": "false",
        # Every test's API calls come from 127.0.0.1 and share its failed-authentication
        # bucket; tests/integration/test_api_limits.py sets a small one of its own.
        "CONVEYOR_API_AUTH_FAILURES_PER_MIN": "10000",
        **{f"CONVEYOR_{name.upper()}": value for name, value in settings.items()},
    }


@pytest.fixture
def env(tmp_path: Path, broker_url: str, pg_url: str) -> dict[str, str]:
    """Environment for `conveyor` subprocesses: this test's broker, the session's ledger."""
    return conveyor_env(broker_url, pg_url, tmp_path)


def producer_app(broker_url: str, pg_url: str, data_dir: Path, **settings: Any) -> ConveyorApp:
    """An in-process app (producer side) on that broker and ledger, with the test jobs;
    ``settings`` as ``load_settings`` takes them. Dispose its ledger and close it after."""
    return create_app(
        load_settings(
            broker_url=broker_url,
            database_url=pg_url,
            data_dir=data_dir / "var",
            task_modules=[TEST_JOBS],
            **settings,
        )
    )


@pytest.fixture
def app(broker_url: str, pg_url: str, tmp_path: Path) -> Iterator[ConveyorApp]:
    """An in-process app (producer side) on the same broker and ledger as `env`."""
    built = producer_app(broker_url, pg_url, tmp_path)
    yield built
    built.ledger.dispose()
    built.close()


@pytest.fixture(scope="module")
def own_ledger_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A ledger database of the test module's own: its queued rows (paused queues, jobs
    held back on purpose) reach no other module's relay."""
    module = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    url = create_ledger(f"conveyor_{module[:20]}")
    yield url
    drop_database(url)


@pytest.fixture
def own_queues(broker_url: str, own_ledger_url: str, processes: Processes) -> Iterator[list[str]]:
    """Two queue names of this test's own, deleted with their jobs afterwards, once the
    test's workers have stopped (a worker whose queue is deleted under it declares it
    again as it reconnects its consumer)."""
    names = [f"test-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    yield names
    processes.stop_all()
    delete_queues(broker_url, names, pg_url=own_ledger_url)


@pytest.fixture
def producer(broker_url: str, own_ledger_url: str, tmp_path: Path) -> Iterator[ConveyorApp]:
    """An in-process app on the test's broker and the module's own ledger."""
    built = producer_app(broker_url, own_ledger_url, tmp_path)
    yield built
    built.ledger.dispose()
    built.close()


def counter_value(app: ConveyorApp, name: str) -> int:
    """The value of `tests.jobs`'s counter ``name`` (what `test.count` jobs add to)."""
    with app.ledger.session() as session:
        value = session.scalar(
            select(test_jobs.counters.c.value).where(test_jobs.counters.c.name == name)
        )
    return int(value or 0)


def new_counter(app: ConveyorApp) -> str:
    """A counter at 0 for `test.count` jobs; returns its name."""
    name = f"counter-{uuid.uuid4().hex[:10]}"
    with app.ledger.transaction() as session:
        session.execute(insert(test_jobs.counters).values(name=name, value=0))
    return name


def effects_per_job(app: ConveyorApp, ids: list[str]) -> dict[str, int]:
    """How many effects each of the `test.count` jobs ``ids`` recorded (absent: none)."""
    effects = test_jobs.effects
    with app.ledger.session() as session:
        found = session.execute(
            select(effects.c.job_id, func.count())
            .where(effects.c.job_id.in_(ids))
            .group_by(effects.c.job_id)
        ).all()
    return {job_id: count for job_id, count in found}


NODE_DIR = ROOT / ".cache" / "node"
"""Where the tests' npm packages go (celery-node, axe-core): installed once per checkout."""


def npm_package(spec: str) -> Path:
    """The folder of npm package ``spec`` (``name@version``), installed into
    :data:`NODE_DIR` on first use."""
    name = spec.rsplit("@", 1)[0]
    folder = NODE_DIR / "node_modules" / name
    if folder.exists():
        return folder
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    # One install at a time across the test processes: two at once each rewrite
    # package.json, and npm then prunes the package the other one installed.
    with (NODE_DIR / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if folder.exists():
            return folder
        subprocess.run(
            [
                "npm",
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(NODE_DIR),
                spec,
            ],
            check=True,
            timeout=300,
        )
    return folder


def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `conveyor ARGS...` as a real process and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "conveyor.worker.cli", *args],
        env=env,
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


LIST_MODULES = """
import sys
from conveyor.worker.cli import main
try:
    main(sys.argv[1:])
finally:
    print("MODULES", *sorted(sys.modules), file=sys.stderr)
"""


def run_cli_listing_modules(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `conveyor ARGS...`; return it and every module it had imported when it ended."""
    result = subprocess.run(
        [sys.executable, "-c", LIST_MODULES, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _, _, listed = result.stderr.rpartition("MODULES")
    return result, set(listed.split())


ProcessFactory = Callable[..., subprocess.Popen[bytes]]
WorkerFactory = ProcessFactory


class Processes:
    """Real `conveyor` processes started by a test, each in its own process group."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"{args[0]}-{len(self.started)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "conveyor.worker.cli", *args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
            start_new_session=True,  # so a test can kill the worker and its pool at once
        )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and all its pool processes, as a crash or an OOM kill would."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def start_worker(processes: Processes) -> WorkerFactory:
    """Start a real `conveyor worker` on a queue; stopped (SIGTERM, then KILL) after."""

    def start(
        env: dict[str, str], queue: str, *, concurrency: int = 2, pool: str = "prefork"
    ) -> subprocess.Popen[bytes]:
        args = ["worker", "-Q", queue, "-c", str(concurrency), "--pool", pool]
        return processes.start(env, *args, "--loglevel", "INFO")

    return start


@pytest.fixture
def start_relay(processes: Processes) -> ProcessFactory:
    """Start a real `conveyor relay` (due retries, lease recovery); stopped after."""

    def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
        return processes.start(env, "relay", "--poll", "0.1")

    return start


class SharedWorker:
    """One `conveyor worker` that the tests of a module share, each on a queue of its own.

    It starts on a queue nobody publishes to; :meth:`consume` makes it take a test's queue
    as well (Celery's ``add_consumer`` control command) and :meth:`release` lets go of it.
    Only for tests that neither stop nor kill the worker, nor count its processes.
    """

    def __init__(self, app: ConveyorApp, node: str) -> None:
        self.app = app
        self.node = node

    def consume(self, queue: str) -> None:
        control = self.app.control
        replies = control.add_consumer(queue, destination=[self.node], reply=True, timeout=30)
        assert replies, f"worker {self.node} did not answer add_consumer({queue})"
        # The reply comes once the consumer is declared; consuming starts with it.
        wait_for(lambda: self._consumes(queue), timeout_s=30)

    def _consumes(self, queue: str) -> bool:
        active = self.app.control.inspect([self.node], timeout=5).active_queues() or {}
        return any(entry["name"] == queue for entry in active.get(self.node, []))

    def release(self, queue: str) -> None:
        self.app.control.cancel_consumer(queue, destination=[self.node], reply=True, timeout=30)


@pytest.fixture(scope="module")
def module_env(
    broker_url: str, pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Like `env`, for processes a module's tests share (needs a module-scoped broker_url)."""
    return {
        **os.environ,
        "CONVEYOR_BROKER_URL": broker_url,
        "CONVEYOR_DATABASE_URL": pg_url,
        "CONVEYOR_DATA_DIR": str(tmp_path_factory.mktemp("shared") / "var"),
        "CONVEYOR_TASK_MODULES": TEST_JOBS,
        "CONVEYOR_RELAY_IN_WORKERS": "false",  # as in conveyor_env
    }


@pytest.fixture(scope="module")
def module_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    started = Processes(tmp_path_factory.mktemp("shared-processes"))
    yield started
    started.stop_all()


@pytest.fixture(scope="module")
def shared_worker(
    broker_url: str, pg_url: str, module_env: dict[str, str], module_processes: Processes
) -> Iterator[SharedWorker]:
    """A worker (prefork, 2 processes) for the module's tests; see :class:`SharedWorker`."""
    idle = f"test-idle-{uuid.uuid4().hex[:10]}"
    node = f"{idle}@shared"
    args = ["worker", "-Q", idle, "-c", "2", "-n", node, "--loglevel", "INFO"]
    process = module_processes.start(module_env, *args)
    settings = load_settings(broker_url=broker_url, database_url=pg_url, task_modules=[TEST_JOBS])
    control = create_app(settings)
    worker = SharedWorker(control, node)

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the shared worker exited with {process.returncode}")
        return bool(control.control.ping([node], timeout=1))

    wait_for(ready, timeout_s=120)
    yield worker
    module_processes.stop_all()
    delete_queues(broker_url, [idle], pg_url=pg_url)
    control.ledger.dispose()
    control.close()


@pytest.fixture
def consuming(shared_worker: SharedWorker, queue: str) -> Iterator[str]:
    """This test's queue, consumed by the module's shared worker until the test ends."""
    shared_worker.consume(queue)
    yield queue
    shared_worker.release(queue)


@pytest.fixture(scope="module")
def shared_relay(module_env: dict[str, str], module_processes: Processes) -> None:
    """One relay for the module's tests: it serves every queue of the session's ledger."""
    module_processes.start(module_env, "relay", "--poll", "0.1")


def wait_for(predicate: Callable[[], Any], *, timeout_s: float = 120, every_s: float = 0.2) -> Any:
    """Poll until ``predicate()`` is truthy; return its value, or fail after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s}s")
        time.sleep(every_s)


def state_of(app: ConveyorApp, job_id: str) -> str | None:
    """The job's state in the ledger, or None while it has no row."""
    job = app.ledger.get(job_id)
    return job.state if job is not None else None


def terminal(app: ConveyorApp, job_id: str) -> str | None:
    """The job's state once it is terminal (for ``wait_for``), else None."""
    state = state_of(app, job_id)
    return state if state is not None and JobState(state).is_terminal else None


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""Prometheus samples by (name, labels)."""


def metric_samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric_value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when the series does not exist (nothing was counted)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


TIERS = ("unit", "integration", "chaos", "full")
"""The tier markers: each test carries exactly one (see docs/testing.md)."""


WITHOUT_ONE_TIER = pytest.StashKey[dict[str, str]]()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a suite in which a test has no tier marker, or more than one.

    A plain run stops at collection with the list. Under xdist a worker cannot stop the
    run cleanly (the controller reports a crash without the reason), so there each such
    test fails at setup instead, with the reason.
    """
    wrong = {}
    for item in items:
        tiers = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
        if len(tiers) != 1:
            wrong[item.nodeid] = ", ".join(tiers) or "no tier marker"
    if not wrong:
        return
    if hasattr(config, "workerinput"):
        config.stash[WITHOUT_ONE_TIER] = wrong
        return
    listed = "\n".join(f"  {nodeid}: {tiers}" for nodeid, tiers in wrong.items())
    raise pytest.UsageError(f"each test needs exactly one of {', '.join(TIERS)}:\n{listed}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    tiers = item.config.stash.get(WITHOUT_ONE_TIER, {}).get(item.nodeid)
    if tiers is not None:
        pytest.fail(f"each test needs exactly one of {', '.join(TIERS)}; it has: {tiers}", False)


BUDGET_S = float(os.environ.get("CONVEYOR_TEST_BUDGET_S", "900"))
"""The default run's time budget (15 minutes); ``scripts/test --full`` sets its own."""
_STARTED_AT: list[float] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    _STARTED_AT.append(time.monotonic())


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Say so when the run took longer than its budget: the suite must stay fast."""
    if not _STARTED_AT or hasattr(config, "workerinput"):
        return
    elapsed_s = time.monotonic() - _STARTED_AT[0]
    if elapsed_s > BUDGET_S:
        terminalreporter.write_sep(
            "!",
            f"over budget: this run took {elapsed_s / 60:.1f} min, the budget is "
            f"{BUDGET_S / 60:.0f} min; see docs/testing.md",
            red=True,
            bold=True,
        )
