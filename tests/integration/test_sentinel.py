"""Redis behind Sentinels: producers and workers find the primary through `sentinel://` URLs.

The Sentinels, the primary and the replica are this module's own (worker/chaos/sentinel.py),
on free ports. A job enqueued through the Sentinels runs on a real worker; garbage pushed
onto the queue's list is dead-lettered as poison (the Sentinel transport has the same
poison-safe channel as the plain Redis one); after a failover, a job enqueued through the
same URL runs on the same worker. The `redis-failover` chaos scenario does the same under
load.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.worker.app import ConveyorApp
from conveyor.worker.chaos.sentinel import MASTER, SentinelGroup
from conveyor.worker.client import enqueue
from conveyor.worker.ledger.dead import DeadFilter
from tests.conftest import (
    WorkerFactory,
    conveyor_env,
    create_ledger,
    drop_database,
    producer_app,
    state_of,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel"))
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture(scope="module")
def ledger_url() -> Iterator[str]:
    url = create_ledger("conveyor_sentinel")
    yield url
    drop_database(url)


def test_jobs_and_poison_go_through_the_sentinels_and_survive_a_failover(
    sentinels: SentinelGroup, ledger_url: str, tmp_path: Path, start_worker: WorkerFactory
) -> None:
    queue = f"test-{uuid.uuid4().hex[:10]}"
    app: ConveyorApp = producer_app(
        sentinels.url, ledger_url, tmp_path, redis_sentinel_master=MASTER
    )
    env = conveyor_env(sentinels.url, ledger_url, tmp_path, redis_sentinel_master=MASTER)
    try:
        start_worker(env, queue)
        first = enqueue("test.sleep", {"s": 0}, queue=queue, app=app)
        wait_for(lambda: state_of(app, first) == "succeeded", timeout_s=60)

        primary = sentinels.node(sentinels.primary_port())
        primary.client().lpush(queue, b"\xff not an envelope")
        dead = wait_for(lambda: app.ledger.dead(DeadFilter(queue=queue)) or None, timeout_s=60)
        assert [job.dead_reason for job in dead] == ["undecodable"]

        old = sentinels.kill_primary()
        sentinels.wait_for_new_primary(old)
        old.start()  # back as a replica of the new primary
        second = enqueue("test.sleep", {"s": 0}, queue=queue, app=app)
        wait_for(lambda: state_of(app, second) == "succeeded", timeout_s=90)
    finally:
        app.ledger.dispose()
