"""The faults each scenario injects while its jobs run.

An injector runs in a thread until the run's jobs are done (``stop`` is set), sleeping
seeded intervals between faults and counting each fault it injects by kind.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from conveyor.worker.chaos.plan import Mix
from conveyor.worker.chaos.proxy import FaultProxy
from conveyor.worker.chaos.stack import Host, Stack
from conveyor.worker.constants import LEASE_S


class Restartable(Protocol):
    """A service of the run's own that an injector may stop and start again."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Request:
    """What a scenario's topology is asked to start: the broker kind, the run's folder and
    the shared services (PostgreSQL admin URL, Redis and RabbitMQ)."""

    scenario: Scenario
    broker: str
    workdir: Path
    pg_url: str
    redis_url: str
    amqp_url: str

    @property
    def shared_broker_url(self) -> str:
        """The machine's shared broker of the run's kind."""
        return self.redis_url if self.broker == "redis" else self.amqp_url

    def scratch_database(self, cleanup: ExitStack) -> str:
        """A fresh database of the run's own on the shared PostgreSQL, dropped with the
        run; its URL."""
        from conveyor.worker.chaos.harness import scratch_database

        name = f"conveyor_chaos_{uuid.uuid4().hex[:10]}"
        return cleanup.enter_context(scratch_database(self.pg_url, name))


@dataclass
class Services:
    """What a topology started for a run: the URLs every process uses, the services the
    injector may break, and what the workers' environment needs beyond the URLs."""

    broker_url: str
    db_url: str
    broker: Restartable | None = None
    database: Restartable | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of the workers and the relay (``CONVEYOR_*`` settings)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The same settings as keyword arguments, for the harness's own app."""
    hosts: list[Host] = field(default_factory=list)
    """Worker hosts (network namespaces) the stack spreads its workers over; none: loopback."""
    network: object | None = None
    """What cuts hosts off (:class:`~worker.chaos.hosts.HostNetwork`), for the injector."""

    def describe(self) -> str:
        first = self.broker_url.split(";", 1)[0]
        return str(urlsplit(first).port or first)


Topology = Callable[[Request, ExitStack], Services]
"""Starts a run's services, registering their teardown on the ExitStack."""


@dataclass
class Faults:
    """What an injector can break, and the tally of what it broke."""

    stack: Stack
    rng: random.Random
    stop: threading.Event
    broker: Restartable | None = None
    database: Restartable | None = None
    proxy: FaultProxy | None = None
    network: object | None = None
    """What cuts worker hosts off (:class:`~worker.chaos.hosts.HostNetwork`), if any."""
    counts: Counter[str] = field(default_factory=Counter)
    figures: dict[str, float] = field(default_factory=dict)
    """What the injector measured (recovery seconds, messages the broker lost...)."""
    jobs: int = 0
    """Jobs the run enqueued (an injector may time its fault by how many are done)."""
    budget: int | None = None
    """Faults to inject at most (None: until the run is over). CI-size runs are bounded so
    that their length is set by the jobs, not by faults that keep coming until the end."""
    lease_s: float = LEASE_S
    """The run's job lease (``CONVEYOR_JOB_LEASE_S``): a partition outlasts it."""

    def record_most(self, name: str, value: float) -> None:
        """Keep the largest ``value`` seen as figure ``name`` (e.g. the longest failover)."""
        self.figures[name] = round(max(value, self.figures.get(name, 0)), 2)

    def record_sum(self, name: str, value: float) -> None:
        """Add ``value`` to figure ``name`` (e.g. messages lost over every fault)."""
        self.figures[name] = self.figures.get(name, 0) + value

    def pause(self, low_s: float, high_s: float) -> bool:
        """Wait a seeded while (the first time, under a second); False once the run is over
        or the budget is spent."""
        if self.budget is not None and sum(self.counts.values()) >= self.budget:
            return False
        if not self.counts:
            low_s, high_s = 0.3, 1.0
        return not self.stop.wait(self.rng.uniform(low_s, high_s))


Injector = Callable[[Faults], None]


def kill_workers(faults: Faults) -> None:
    """SIGKILL a pool child or a whole worker (main process and pool); the supervisor restarts."""
    while faults.pause(0.5, 1.5):
        workers = [w for w in faults.stack.workers if w.poll() is None]
        if not workers:
            continue
        worker = faults.rng.choice(workers)
        children = faults.stack.pool_children(worker)
        if children and faults.rng.random() < 0.5:
            os.kill(faults.rng.choice(children), signal.SIGKILL)
            faults.counts["sigkill_pool_child"] += 1
        else:
            os.killpg(worker.pid, signal.SIGKILL)
            faults.counts["sigkill_worker"] += 1


def rolling_restarts(faults: Faults) -> None:
    """A deploy: start a new worker, then SIGTERM an old one (it finishes its jobs first)."""
    while faults.pause(1.0, 2.0):
        old = [w for w in faults.stack.workers if w.poll() is None]
        faults.stack.add_worker()
        if old:
            faults.rng.choice(old).send_signal(signal.SIGTERM)
            faults.counts["sigterm_worker"] += 1


def restart_broker(faults: Faults) -> None:
    assert faults.broker is not None
    while faults.pause(4.0, 8.0):
        faults.broker.stop()
        faults.stop.wait(faults.rng.uniform(1.0, 2.0))
        faults.broker.start()
        faults.counts["broker_restart"] += 1


def database_outage(faults: Faults) -> None:
    assert faults.database is not None
    while faults.pause(4.0, 8.0):
        faults.database.stop()
        faults.stop.wait(faults.rng.uniform(3.0, 5.0))
        faults.database.start()
        faults.counts["db_outage"] += 1


def network_faults(faults: Faults) -> None:
    assert faults.proxy is not None
    proxy = faults.proxy
    while faults.pause(1.0, 3.0):
        kind = faults.rng.choice(["latency", "reset", "cut"])
        if kind == "latency":
            proxy.latency_s = faults.rng.uniform(0.02, 0.2)
            faults.stop.wait(faults.rng.uniform(1.0, 3.0))
            proxy.latency_s = 0.0
        elif kind == "reset":
            proxy.reset_all()
        else:
            proxy.set_cut(True)
            faults.stop.wait(faults.rng.uniform(2.0, 4.0))
            proxy.set_cut(False)
        faults.counts[f"network_{kind}"] += 1


def nothing(faults: Faults) -> None:
    """Scenarios whose faults are in the jobs or the messages themselves."""
    faults.stop.wait()


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    inject: Injector
    mix: Mix = field(default_factory=Mix)
    own_broker: bool = False
    own_database: bool = False
    proxy: bool = False
    poison_share: float = 0.0
    services: Topology | None = None
    """Starts the run's services; None: the shared ones, or own per the two flags above."""
    brokers: tuple[str, ...] = ("redis", "rabbitmq")
    relay: bool = True
    """Run a ``conveyor relay`` beside the workers (False: the workers' own relay only)."""
    in_default_run: bool = True
    """Run at CI size in the default test run (False: only in the full tier)."""


def _partition() -> Scenario:
    from conveyor.worker.chaos.hosts import partition, partition_services

    return Scenario(
        "partition",
        "two worker hosts (network namespaces): each in turn is cut off from the broker and "
        "the ledger for longer than a job's lease, then healed",
        partition,
        mix=Mix(sleep_ms=(200, 600)),  # jobs long enough to be running when the cut comes
        services=partition_services,
    )


def _redis_failover() -> Scenario:
    from conveyor.worker.chaos.sentinel import fail_over, sentinel_services

    return Scenario(
        "redis-failover",
        "Redis behind three Sentinels: SIGKILL the primary mid-run (twice), the replica is "
        "promoted, the old primary comes back as a replica",
        fail_over,
        services=sentinel_services,
        brokers=("redis",),
    )


def _ledger_failover() -> Scenario:
    from conveyor.worker.chaos.standby import fail_over_ledger, standby_services

    return Scenario(
        "ledger-failover",
        "the ledger on a PostgreSQL primary with a synchronous streaming standby: SIGKILL the "
        "primary mid-run, promote the standby; the workers reconnect through the multi-host URL",
        fail_over_ledger,
        services=standby_services,
        # What fails over is the ledger; db-outage covers both brokers' side of an outage.
        brokers=("redis",),
    )


def _rabbitmq_cluster() -> list[Scenario]:
    from conveyor.worker.chaos.rabbit_cluster import (
        cluster_services,
        kill_queue_leader,
        rolling_restart,
    )

    return [
        Scenario(
            "rabbitmq-node-loss",
            "three-node RabbitMQ cluster, quorum queues: SIGKILL the node leading the run's "
            "queue mid-run (twice); another member takes over, the killed node rejoins",
            kill_queue_leader,
            mix=Mix(sleep_ms=(300, 900)),  # jobs still running when the kills come
            services=cluster_services,
            brokers=("rabbitmq",),
            # Two to three minutes at CI size, a third of it the cluster's start: the
            # default run's longest test by far, so it runs at both sizes in the full tier.
            in_default_run=False,
        ),
        Scenario(
            "rabbitmq-rolling-restart",
            "three-node RabbitMQ cluster, quorum queues: stop and start each node in turn, "
            "as an upgrade would, waiting until the queues are in sync before the next",
            rolling_restart,
            # Under the chaos job's 2 s time limit, long enough to span three restarts.
            mix=Mix(sleep_ms=(800, 1600)),
            services=cluster_services,
            brokers=("rabbitmq",),
            # Two minutes at CI size: the full tier only, like node-loss.
            in_default_run=False,
        ),
    ]


SCENARIOS = {
    scenario.name: scenario
    for scenario in [
        Scenario("worker-kill", "SIGKILL pool children and whole workers", kill_workers),
        Scenario("worker-term", "rolling SIGTERM restarts, as in a deploy", rolling_restarts),
        Scenario(
            "leader-kill",
            "SIGKILL workers as in worker-kill, with no `conveyor relay`: the workers' own "
            "elected relay recovers their jobs",
            kill_workers,
            relay=False,
            # The election does not depend on the broker (test_election.py runs both); on
            # one broker it costs the default run a minute and a half less.
            brokers=("redis",),
        ),
        Scenario(
            "broker-restart",
            "stop and restart the run's own broker (Redis with AOF, or a RabbitMQ node)",
            restart_broker,
            own_broker=True,
        ),
        Scenario(
            "db-outage",
            "the ledger's PostgreSQL (the run's own) stops for seconds and comes back",
            database_outage,
            own_database=True,
        ),
        Scenario(
            "network",
            "latency, resets and cuts between workers and broker (TCP fault proxy)",
            network_faults,
            proxy=True,
        ),
        Scenario(
            "poison",
            "malformed, unknown-task and schema-invalid messages mixed into the stream",
            nothing,
            poison_share=0.05,
        ),
        Scenario(
            "flaky",
            "jobs fail with probability p, overrun their time limit or ask for RetryAfter",
            nothing,
            mix=Mix(fail_p=0.3, fatal=0.03, retry_after=0.1, timeout=0.03),
        ),
        _redis_failover(),
        _partition(),
        _ledger_failover(),
        *_rabbitmq_cluster(),
    ]
}
