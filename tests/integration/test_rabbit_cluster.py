"""A three-node RabbitMQ cluster: quorum queues on every node, a client that fails over.

The cluster is this module's own (worker/chaos/rabbit_cluster.py), on free ports. Conveyor
declares its queues (and their ``.dead`` queues) as quorum queues under
``CONVEYOR_QUEUE_TYPE=quorum``; RabbitMQ gives each a member on all three nodes without
being asked (its default initial group size is the cluster's size). Messages published
with confirms through kombu's ``;`` failover list survive SIGKILL of the node that leads
the queue and holds the client's connection: the same connection goes on publishing
through another node, and every message is consumed once after the node came back. The
``rabbitmq-node-loss`` chaos scenario does the same under load.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from kombu.connection import Connection
from kombu.entity import Queue

from conveyor.config import load_settings
from conveyor.worker.app import create_app
from conveyor.worker.chaos.rabbit_cluster import NODES, RabbitCluster
from conveyor.worker.deadletter import dead_letter_destination, dead_letters_quorum

# In the full tier: a cluster costs 30-50 s to start, and the default run's
# rabbitmq-node-loss chaos run already checks, on a cluster of its own, that no confirmed
# message is lost when the queue's leader is SIGKILLed.
pytestmark = [pytest.mark.integration, pytest.mark.full]

BEFORE = 100
AFTER = 100


@pytest.fixture
def cluster() -> Iterator[RabbitCluster]:
    # Not under tmp_path: pytest's base folder is root's alone (0700), and the nodes run
    # as the rabbitmq user, who must reach their data folders.
    folder = Path(tempfile.mkdtemp(prefix="conveyor-rabbit-cluster-"))
    folder.chmod(0o755)
    cluster = RabbitCluster(folder / "rabbitmq")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()  # every node, also after a failed start
        left = cluster.processes()
        shutil.rmtree(folder, ignore_errors=True)
    assert not left, f"processes of the cluster's nodes outlived it: {left}"


def conveyor_queues(cluster: RabbitCluster, tmp_path: Path, name: str) -> tuple[Queue, Queue]:
    """``name`` and its dead-letter queue, as a quorum-queue Conveyor declares them."""
    settings = load_settings(
        broker_url=cluster.url,
        database_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        data_dir=tmp_path / "var",
        queue_type="quorum",
    )
    app = create_app(settings)
    try:
        # A queue named nowhere in CONVEYOR_QUEUES, as workers and producers create it.
        queue = app.amqp.queues[name]
        return queue, dead_letter_destination(name, quorum=dead_letters_quorum(app, name))
    finally:
        app.ledger.dispose()


def publish(connection: Connection, queue: Queue, ids: list[str]) -> None:
    producer = connection.Producer()
    send = connection.ensure(producer, producer.publish, max_retries=10, interval_max=1)
    for job_id in ids:
        send({"id": job_id}, exchange=queue.exchange, routing_key=queue.routing_key)


def consume_all(cluster: RabbitCluster, queue: Queue) -> Counter[str]:
    seen: Counter[str] = Counter()
    with Connection(cluster.live().url) as connection:
        bound = queue.bind(connection.default_channel)
        while (message := bound.get(no_ack=False)) is not None:
            seen[message.payload["id"]] += 1
            message.ack()
    return seen


@pytest.mark.timeout(300)
def test_quorum_queues_keep_every_confirmed_message_when_the_leader_dies(
    cluster: RabbitCluster, tmp_path: Path
) -> None:
    name = f"test-{uuid.uuid4().hex[:10]}"
    queue, dead = conveyor_queues(cluster, tmp_path, name)
    # Only the type: no x-quorum-initial-group-size, yet a member on every node (below).
    assert queue.as_dict()["queue_arguments"] == {"x-queue-type": "quorum"}
    before = [str(uuid.uuid4()) for _ in range(BEFORE)]
    after = [str(uuid.uuid4()) for _ in range(AFTER)]
    with Connection(cluster.url, transport_options={"confirm_publish": True}) as connection:
        for declared in (queue, dead):
            declared.bind(connection.default_channel).declare()
            status = cluster.queue_status(declared.name)
            assert status["type"] == "quorum"
            assert sorted(status["members"]) == sorted(node.node for node in cluster.nodes)
        assert len(cluster.nodes) == NODES == 3
        publish(connection, queue, before)
        # The declaring client's node leads the queue: killing it cuts the connection too.
        leader = cluster.leader(name)
        assert leader.port == urlsplit(connection.as_uri()).port
        cluster.kill(leader)
        cluster.wait_for_new_leader(name, leader)
        publish(connection, queue, after)  # the same connection, through another node
        assert urlsplit(connection.as_uri()).port != leader.port
    cluster.restart(leader, name)
    assert leader.node in cluster.queue_status(name)["online"]

    seen = consume_all(cluster, queue)

    assert set(seen) == {*before, *after}
    assert max(seen.values()) == 1
