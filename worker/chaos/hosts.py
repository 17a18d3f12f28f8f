"""Worker hosts on one machine: network namespaces on a bridge, which a scenario can cut off.

Each host is a network namespace (``ip netns``) with one end of a veth pair; the other end
is on a bridge of the machine's, which holds :data:`MACHINE_ADDRESS`. The run's own broker
and PostgreSQL listen on loopback and on that address, so workers inside a host reach them
as another machine would, and :meth:`HostNetwork.cut` takes a host's link down: its
packets go nowhere, as in a partition, until :meth:`HostNetwork.heal`.

Making namespaces needs root (CAP_NET_ADMIN) and iproute2; :func:`unavailable` says why
they cannot be made, for the scenario to skip with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from contextlib import ExitStack
from typing import TYPE_CHECKING

from conveyor.worker.chaos.services import PostgresInstance, RabbitInstance, RedisInstance
from conveyor.worker.chaos.stack import Host

if TYPE_CHECKING:  # the scenarios import this module for their topology
    from conveyor.worker.chaos.scenarios import Faults, Request, Services

SUBNET = "10.231.0"
MACHINE_ADDRESS = f"{SUBNET}.1"


def _ip(*args: str, check: bool = True) -> bool:
    done = subprocess.run(["ip", *args], check=check, capture_output=True)
    return done.returncode == 0


def unavailable() -> str | None:
    """Why worker hosts cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"cvprobe{uuid.uuid4().hex[:6]}"
    if not _ip("netns", "add", probe, check=False):
        return "`ip netns add` failed (no CAP_NET_ADMIN in this sandbox?)"
    _ip("netns", "del", probe, check=False)
    return None


class HostNetwork:
    """``count`` worker hosts on a bridge of their own; :meth:`remove` undoes everything."""

    def __init__(self, count: int) -> None:
        tag = uuid.uuid4().hex[:5]
        self.bridge = f"cvbr{tag}"
        self.hosts = [Host(f"cv{tag}h{i}") for i in range(count)]
        self._links = {host.name: f"cv{tag}v{i}" for i, host in enumerate(self.hosts)}

    def create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{MACHINE_ADDRESS}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, host in enumerate(self.hosts):
            outside, inside = self._links[host.name], f"{self._links[host.name]}i"
            _ip("netns", "add", host.name)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", host.name)
            _ip("link", "set", outside, "master", self.bridge)
            _ip("link", "set", outside, "up")
            within = ("netns", "exec", host.name, "ip")
            _ip(*within, "addr", "add", f"{SUBNET}.{10 + index}/24", "dev", inside)
            _ip(*within, "link", "set", inside, "up")
            _ip(*within, "link", "set", "lo", "up")

    def cut(self, host: Host) -> None:
        """Partition ``host`` from the machine: its link goes down, packets are dropped."""
        _ip("link", "set", self._links[host.name], "down")

    def heal(self, host: Host) -> None:
        _ip("link", "set", self._links[host.name], "up")

    def remove(self) -> None:
        for host in self.hosts:
            _ip("link", "del", self._links[host.name], check=False)
            _ip("netns", "del", host.name, check=False)
        _ip("link", "del", self.bridge, check=False)


HOSTS = 2
CUT_PAST_LEASE_S = 5.0
"""How much longer than a job's lease a partition lasts, so that the host's jobs run
elsewhere (the run's ``CONVEYOR_JOB_LEASE_S``: 15 s with the default 10 s lease)."""


def partition_services(request: Request, cleanup: ExitStack) -> Services:
    """A topology (:class:`~worker.chaos.scenarios.Scenario`): two worker hosts, and the
    run's own broker and PostgreSQL listening on loopback and on the hosts' bridge."""
    from conveyor.worker.chaos.scenarios import Services

    why = unavailable()
    if why is not None:
        raise HostsUnavailable(why)
    network = HostNetwork(HOSTS)
    cleanup.callback(network.remove)
    network.create()
    addresses = ("127.0.0.1", MACHINE_ADDRESS)
    kind = RedisInstance if request.broker == "redis" else RabbitInstance
    broker = kind(request.workdir / "broker", addresses=addresses)
    broker.start()
    cleanup.callback(broker.stop)
    database = PostgresInstance(request.workdir / "pg", addresses=addresses)
    database.init()
    database.start()
    cleanup.callback(database.stop)
    across = {
        "CONVEYOR_BROKER_URL": broker.url.replace("127.0.0.1", MACHINE_ADDRESS, 1),
        "CONVEYOR_DATABASE_URL": database.url.replace("127.0.0.1", MACHINE_ADDRESS, 1),
    }
    return Services(broker.url, database.url, env=across, hosts=network.hosts, network=network)


class HostsUnavailable(RuntimeError):
    """Worker hosts cannot be made on this machine (the reason is the message)."""


def partition(faults: Faults) -> None:
    """Cut one worker host off from the broker and the ledger for :data:`CUT_PAST_LEASE_S`
    seconds longer than a job's lease, heal it, and again with the other host while the run
    lasts."""
    network = faults.network
    assert isinstance(network, HostNetwork)
    # Cut a host only once its workers run jobs (their pools are up), or nothing is cut off.
    while not faults.stop.is_set() and not all(
        faults.stack.pool_children(worker) for worker in faults.stack.workers
    ):
        faults.stop.wait(0.2)
    cut_s = faults.lease_s + CUT_PAST_LEASE_S
    while faults.pause(1.0, 2.0):
        host = network.hosts[faults.counts["host_partitioned"] % len(network.hosts)]
        network.cut(host)
        if faults.counts["host_partitioned"]:
            faults.stop.wait(cut_s)
        else:  # the first cut lasts its whole time, even if the jobs finish meanwhile
            time.sleep(cut_s)
        network.heal(host)
        faults.counts["host_partitioned"] += 1
        faults.figures["partition_s"] = cut_s
