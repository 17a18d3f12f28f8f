"""A three-node RabbitMQ cluster of a chaos run's own, and the faults it suffers.

The nodes run on free loopback ports in the run's folder, with node names, data folders,
distribution ports and an Erlang cookie of their own (in a ``$HOME`` of the run's, which
the nodes and their CLI share), and are stopped with the run. Nodes two and three join
node one. Conveyor reaches them through kombu's failover list (``url``: the three AMQP
URLs joined by ``;``) and declares its queues as quorum queues (``CONVEYOR_QUEUE_TYPE``),
which RabbitMQ replicates on every node of the cluster (its default initial group size is
the cluster's size). A quorum queue confirms a publish once a majority of its members has
the message, so losing one node of three loses no confirmed message.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from conveyor.worker.chaos.services import RabbitInstance, wait_until

if TYPE_CHECKING:  # the scenarios import this module for their topology
    from conveyor.worker.chaos.scenarios import Faults, Request, Services

NODES = 3
KILLS = 2
"""Leader kills per run at most (as :func:`~worker.chaos.sentinel.fail_over`'s)."""
MARKERS = 50
"""Messages published to a marker queue before each kill (:func:`kill_queue_leader`)."""


class RabbitCluster:
    """Three clustered RabbitMQ nodes; ``url`` is the broker URL to give Conveyor."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        cookie = secrets.token_hex(20).upper()
        self.nodes = [
            RabbitInstance(directory / f"node-{index}", cookie=cookie) for index in range(NODES)
        ]
        self.url = ";".join(node.url for node in self.nodes)
        self._down: set[str] = set()
        """Nodes this cluster killed or stopped and has not started again."""

    def start(self) -> None:
        """Start the three nodes side by side, then join two and three to node one."""
        failures: list[BaseException] = []

        def start(node: RabbitInstance) -> None:
            try:
                node.start()
            except BaseException as error:  # reported below, in the caller's thread
                failures.append(error)

        threads = [threading.Thread(target=start, args=(node,)) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", seed.node)
            node.ctl("start_app")
        wait_until(
            lambda: len(self.running_nodes()) == NODES, timeout_s=60, what="a RabbitMQ cluster"
        )

    def stop(self) -> None:
        """Stop every node (one that does not stop within a minute is killed)."""
        for node in self.nodes:
            node.stop()
        self._down = {node.node for node in self.nodes}

    def processes(self) -> list[int]:
        """The pids of the nodes' processes still running (none once stopped)."""
        return [pid for node in self.nodes for pid in node.processes()]

    def live(self) -> RabbitInstance:
        """A node that is up, to ask about the cluster."""
        for node in self.nodes:
            if node.node not in self._down:
                return node
        raise RuntimeError("no RabbitMQ node of the cluster is up")

    def running_nodes(self) -> list[str]:
        status = json.loads(self.live().ctl("cluster_status", "--formatter", "json"))
        return list(status["running_nodes"])

    def queue_status(self, queue: str) -> dict[str, Any]:
        """``list_queues`` of one queue: its type, leader, members and online members."""
        rows = json.loads(
            self.live().ctl(
                "list_queues",
                "name",
                "type",
                "leader",
                "members",
                "online",
                "messages",
                "--formatter",
                "json",
                "--quiet",
            )
        )
        for row in rows:
            if row["name"] == queue:
                return dict(row)
        raise LookupError(f"no queue {queue!r} on the cluster")

    def leader(self, queue: str) -> RabbitInstance:
        """The node leading the quorum queue ``queue`` now."""
        name = self.queue_status(queue)["leader"]
        for node in self.nodes:
            if node.node == name:
                return node
        raise LookupError(f"{queue} has no leader (not a quorum queue?): {name!r}")

    def kill(self, node: RabbitInstance) -> None:
        """SIGKILL one node (down until :meth:`restart`)."""
        self._down.add(node.node)
        node.kill()

    def stop_node(self, node: RabbitInstance) -> None:
        """Stop one node cleanly (down until :meth:`restart`): its queues hand over their
        leadership first."""
        self._down.add(node.node)
        node.stop()

    def wait_until_safe_to_stop(self, node: RabbitInstance, *, timeout_s: float = 120) -> None:
        """Wait until :meth:`quorum_critical` says ``node`` may go."""
        wait_until(
            lambda: not self.quorum_critical(node),
            timeout_s=timeout_s,
            what=f"the quorum queues in sync without {node.node}",
        )

    def quorum_critical(self, node: RabbitInstance) -> bool:
        """Whether stopping ``node`` now would leave a quorum queue without a majority
        (another member is down or still catching up): the check before a rolling restart."""
        try:
            node.ctl("check_if_node_is_quorum_critical", tool="rabbitmq-queues")
        except subprocess.CalledProcessError:
            return True
        return False

    def restart(self, node: RabbitInstance, queue: str, *, timeout_s: float = 120) -> None:
        """Start a killed or stopped node and wait until it is back in the cluster and an
        online member of ``queue`` again (it rejoins from its own data folder)."""
        node.start()
        self._down.discard(node.node)
        wait_until(
            lambda: (
                node.node in self.running_nodes()
                and node.node in self.queue_status(queue)["online"]
            ),
            timeout_s=timeout_s,
            what=f"{node.node} rejoining",
        )

    def wait_for_new_leader(
        self, queue: str, old: RabbitInstance, *, timeout_s: float = 60
    ) -> float:
        """Wait until ``queue`` confirms a publish again after its leader ``old`` died; the
        seconds it took. Only a leader commits a message, so the first confirm marks the
        end of the election; the probes go through a surviving node, a few a second, and
        ``rabbitmqctl`` confirms afterwards (not timed) that another node leads."""
        started = time.monotonic()
        survivor = self.live()
        wait_until(
            lambda: self.probe(queue, survivor, confirm_timeout_s=1.0),
            timeout_s=timeout_s,
            what=f"{queue} confirming a publish",
        )
        took_s = time.monotonic() - started
        wait_until(
            lambda: self.leader(queue).node != old.node,
            timeout_s=timeout_s,
            what=f"a new leader of {queue}",
        )
        return took_s

    def publish_markers(self, name: str, node: RabbitInstance, count: int) -> set[str]:
        """Declare the quorum queue ``name`` through ``node`` (which then leads it: the
        leader is the declaring client's node) and publish ``count`` messages to it with
        confirms; their ids."""
        ids = {str(uuid.uuid4()) for _ in range(count)}
        destination = marker_queue(name)
        with Connection(node.url, transport_options={"confirm_publish": True}) as connection:
            producer = connection.Producer()
            for marker in sorted(ids):
                producer.publish(
                    {"marker": marker},
                    exchange=destination.exchange,
                    routing_key=name,
                    declare=[destination],
                    serializer="json",
                    delivery_mode=2,
                )
        return ids

    def drain_markers(self, name: str, *, timeout_s: float = 60) -> set[str]:
        """The ids the marker queue ``name`` holds; then it is deleted. Retried until the
        queue answers (it may still be electing a leader)."""
        found: set[str] = set()

        def drain() -> bool:
            found.clear()
            with Connection(self.live().url) as connection:
                bound = marker_queue(name).bind(connection.default_channel)
                # Never acked: a retry after a failure sees every message again.
                while (message := bound.get(no_ack=False)) is not None:
                    found.add(str(message.payload["marker"]))
                bound.delete()
            return True

        wait_until(drain, timeout_s=timeout_s, what=f"draining {name}")
        return found

    def probe(self, queue: str, node: RabbitInstance, *, confirm_timeout_s: float) -> bool:
        """Publish one message to ``queue`` through ``node`` and wait for its confirm
        (raises when none comes within ``confirm_timeout_s``).

        The probe expires at once (per-message TTL), so no consumer ever sees it.
        """
        destination = Queue(queue, Exchange(""), routing_key=queue)
        with Connection(
            node.url, connect_timeout=1, transport_options={"confirm_publish": True}
        ) as connection:
            connection.Producer().publish(
                {"probe": str(uuid.uuid4())},
                exchange=destination.exchange,
                routing_key=queue,
                expiration=0.001,  # kombu sends milliseconds: 1
                serializer="json",
                confirm_timeout=confirm_timeout_s,
            )
        return True


def marker_queue(name: str) -> Queue:
    """A quorum queue on the default exchange, for :meth:`RabbitCluster.publish_markers`."""
    return Queue(name, Exchange(""), routing_key=name, queue_arguments={"x-queue-type": "quorum"})


def cluster_services(request: Request, cleanup: ExitStack) -> Services:
    """A topology (:class:`~worker.chaos.scenarios.Scenario`): a three-node RabbitMQ
    cluster with quorum queues, and a scratch database on the shared PostgreSQL."""
    from conveyor.worker.chaos.scenarios import Services

    cluster = RabbitCluster(request.workdir / "rabbitmq")
    cleanup.callback(cluster.stop)
    cluster.start()
    return Services(
        cluster.url,
        request.scratch_database(cleanup),
        broker=cluster,
        env={"CONVEYOR_QUEUE_TYPE": "quorum"},
        settings={"queue_type": "quorum"},
    )


def kill_queue_leader(faults: Faults) -> None:
    """SIGKILL the node leading the run's queue mid-run, wait until another node leads it,
    bring the killed node back and wait until it is an online member again; again while the
    run lasts (two kills at most).

    Measured: seconds from the kill until the queue confirms a publish again, that is has
    a new leader (``leader_change_s_max``, :meth:`RabbitCluster.wait_for_new_leader`),
    and ``messages_lost``: just before each kill, :data:`MARKERS` messages are published
    with confirms to a quorum queue of their own led by the node about to die; the figure
    is how many of their ids that queue no longer holds after the failover. The run's
    queue itself cannot be read by id without taking jobs from the workers, and the
    message counts ``rabbitmqctl`` reports proved too coarse to subtract (counting gave
    17 "lost" in a run that lost no job); whether any of the run's jobs was lost is the
    run's own invariant.
    """
    cluster = faults.broker
    assert isinstance(cluster, RabbitCluster)
    queue = faults.stack.queue
    wait_until(lambda: cluster.leader(queue), timeout_s=60, what=f"{queue} declared")
    while faults.pause(3.0, 6.0):
        old = cluster.leader(queue)
        markers = f"{queue}.markers-{faults.counts['rabbitmq_leader_killed']}"
        published = cluster.publish_markers(markers, old, MARKERS)
        cluster.kill(old)
        took_s = cluster.wait_for_new_leader(queue, old)
        lost = len(published - cluster.drain_markers(markers))
        faults.counts["rabbitmq_leader_killed"] += 1
        faults.record_most("leader_change_s_max", took_s)
        faults.record_sum("messages_lost", lost)
        cluster.restart(old, queue)
        if faults.counts["rabbitmq_leader_killed"] >= KILLS:
            break
    faults.stop.wait()


def rolling_restart(faults: Faults) -> None:
    """Restart each node in turn, once through the cluster, as an upgrade would: wait
    until stopping the node leaves every quorum queue a majority
    (``check_if_node_is_quorum_critical``), stop it cleanly (``rabbitmqctl stop``: its
    queues hand their leadership over), start it and wait until it is back in the cluster
    and an online member of the run's queue. Goes on through the cluster when the run's
    jobs are done before it is (without pausing between nodes then), not past the run's
    fault budget.

    Measured: the seconds of each restart, from the stop until the node is an online member
    again (``restart_s_1``... and ``restart_s_max``).
    """
    cluster = faults.broker
    assert isinstance(cluster, RabbitCluster)
    queue = faults.stack.queue
    wait_until(lambda: cluster.leader(queue), timeout_s=60, what=f"{queue} declared")
    for number, node in enumerate(cluster.nodes, start=1):
        if not faults.pause(2.0, 4.0) and not faults.stop.is_set():
            break  # the run's fault budget is spent (when the run is over, go on)
        cluster.wait_until_safe_to_stop(node)
        started = time.monotonic()
        cluster.stop_node(node)
        cluster.restart(node, queue)
        took_s = round(time.monotonic() - started, 2)
        faults.counts["rabbitmq_node_restarted"] += 1
        faults.figures[f"restart_s_{number}"] = took_s
        faults.record_most("restart_s_max", took_s)
    faults.stop.wait()
