"""Redis with Sentinel failover, started by a chaos run: a primary, a replica, three Sentinels.

Everything runs on free loopback ports in the run's folder and is stopped with the run.
The Sentinels watch the primary under :data:`MASTER` with a quorum of two and declare it
down after a second, so a killed primary is replaced within seconds. Replication is
asynchronous: writes the primary acknowledged but had not yet sent to the replica are
gone after a failover. The ledger is the source of truth for those jobs
(:meth:`SentinelGroup.missing`).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from conveyor.worker.chaos.services import free_port, wait_until

if TYPE_CHECKING:  # the scenarios import this module for their topology
    from conveyor.worker.chaos.scenarios import Faults, Request, Services

MASTER = "conveyor"
SENTINELS = 3


class RedisNode:
    """One redis-server of the group (append-only, so a restarted node keeps its data)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
                *("--dir", str(self.directory)),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_until(self.client().ping, timeout_s=30, what=f"redis on {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


class SentinelGroup:
    """A primary, a replica and three Sentinels; ``url`` is the broker URL to give Conveyor."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.nodes = [RedisNode(directory / "a"), RedisNode(directory / "b")]
        self.sentinel_ports = [free_port() for _ in range(SENTINELS)]
        self._sentinels: list[subprocess.Popen[bytes]] = []
        self.url = ";".join(f"sentinel://127.0.0.1:{port}/0" for port in self.sentinel_ports)

    def start(self) -> None:
        primary, replica = self.nodes
        primary.start()
        replica.start("--replicaof", "127.0.0.1", str(primary.port))
        wait_until(
            lambda: replica.client().info("replication")["master_link_status"] == "up",
            timeout_s=30,
            what="redis replication",
        )
        for index, port in enumerate(self.sentinel_ports):
            folder = self.directory / f"sentinel-{index}"
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            self._sentinels.append(
                subprocess.Popen(
                    ["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL
                )
            )
        # Ready once every Sentinel knows the replica and the two other Sentinels.
        wait_until(self._sentinels_agree, timeout_s=60, what="redis sentinels")

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            fields: Any = self._sentinel(port).sentinel_master(MASTER)
            if int(fields["num-slaves"]) < 1 or int(fields["num-other-sentinels"]) < 2:
                return False
        return True

    def primary_port(self) -> int:
        """The primary's port as the Sentinels name it now."""
        for port in self.sentinel_ports:
            try:
                address: Any = self._sentinel(port).sentinel_get_master_addr_by_name(MASTER)
            except redis.RedisError:
                continue
            return int(address[1])
        raise RuntimeError("no Sentinel answered")

    def node(self, port: int) -> RedisNode:
        return next(node for node in self.nodes if node.port == port)

    def kill_primary(self) -> RedisNode:
        """SIGKILL the current primary; returns its node (down until :meth:`RedisNode.start`)."""
        node = self.node(self.primary_port())
        node.kill()
        return node

    def wait_for_new_primary(self, old: RedisNode, *, timeout_s: float = 60) -> float:
        """Wait until the Sentinels promoted another node and it takes writes; the seconds."""
        started = time.monotonic()

        def promoted() -> bool:
            port = self.primary_port()
            return port != old.port and bool(self.node(port).client().set("chaos:probe", 1))

        wait_until(promoted, timeout_s=timeout_s, what="a Sentinel failover")
        return time.monotonic() - started

    def job_ids(self, queue: str) -> set[str]:
        """The job ids the primary holds for ``queue``: its lists (every priority level)
        and kombu's unacknowledged messages."""
        client = self.node(self.primary_port()).client()
        envelopes: list[Any] = []
        for key in client.scan_iter(match=f"{queue}*"):
            if client.type(key) == b"list":
                envelopes.extend(json.loads(item) for item in client.lrange(key, 0, -1))
        # kombu keeps an unacknowledged message as [envelope, exchange, routing key].
        envelopes.extend(json.loads(value)[0] for value in client.hvals("unacked"))
        ids = set()
        for envelope in envelopes:
            job_id = envelope.get("headers", {}).get("id") if isinstance(envelope, dict) else None
            if job_id:
                ids.add(job_id)
        return ids

    def stop(self) -> None:
        for process in self._sentinels:
            if process.poll() is None:
                process.terminate()
                process.wait(30)
        for node in self.nodes:
            node.stop()


def sentinel_services(request: Request, cleanup: ExitStack) -> Services:
    """A topology (:class:`~worker.chaos.scenarios.Scenario`): Redis behind Sentinels,
    and a scratch database on the shared PostgreSQL."""
    from conveyor.worker.chaos.scenarios import Services

    group = SentinelGroup(request.workdir / "sentinel")
    cleanup.callback(group.stop)
    group.start()
    return Services(
        group.url,
        request.scratch_database(cleanup),
        broker=group,
        env={"CONVEYOR_REDIS_SENTINEL_MASTER": MASTER},
        settings={"redis_sentinel_master": MASTER},
    )


def fail_over(faults: Faults) -> None:
    """Kill the primary mid-run, wait for the Sentinels' failover, bring the old primary
    back (the Sentinels make it a replica of the new one); again while the run lasts.

    Measured: seconds from the kill until the new primary takes writes, and the messages
    the failover lost (job ids the old primary held just before the kill that the new one
    does not hold just after it is promoted, before the workers have reconnected).
    """
    group = faults.broker
    assert isinstance(group, SentinelGroup)
    queue = faults.stack.queue
    while faults.pause(3.0, 6.0):
        held = group.job_ids(queue)
        old = group.kill_primary()
        took_s = group.wait_for_new_primary(old)
        lost = len(held - group.job_ids(queue))
        faults.counts["redis_primary_killed"] += 1
        faults.record_most("failover_s_max", took_s)
        faults.record_sum("messages_lost", lost)
        old.start()
        if faults.counts["redis_primary_killed"] >= 2:
            break
    faults.stop.wait()
