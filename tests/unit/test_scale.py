"""``conveyor scale``'s arithmetic and its refusals, on made-up fleets (no services)."""

from __future__ import annotations

import pytest

from conveyor.config import load_settings
from conveyor.worker.errors import UsageError
from conveyor.worker.operations.scale import QueueNeed, WorkerView, plan, recommend

pytestmark = pytest.mark.unit


def need(**fields: object) -> QueueNeed:
    values: dict[str, object] = {
        "name": "q",
        "depth": 0,
        "running": 0,
        "oldest_queued_age_s": None,
        "paused": False,
    }
    return QueueNeed(**(values | fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("depth", "running", "processes", "rate", "target_s", "drain_s", "recommended", "advice"),
    [
        # 2 jobs/s on 4 processes = 0.5 per process; 1,200 + 4 jobs in 300 s needs 8.03 -> 9.
        (1200, 4, 4, 2.0, 300, 602.0, 9, "grow by 5"),
        # 10 jobs at 1/s on 4 processes: 10 s; within 300 s one process is enough.
        (10, 0, 4, 1.0, 300, 10.0, 1, "could shrink by 3"),
        # 300 jobs at 1/s on 2 processes take 300 s: exactly enough; 600 would need twice.
        (300, 0, 2, 1.0, 300, 300.0, 2, "enough"),
        (600, 0, 2, 1.0, 300, 600.0, 4, "grow by 2"),
        (0, 0, 3, 0.0, 300, 0.0, 3, "nothing waiting"),
    ],
)
def test_the_recommendation_drains_the_backlog_within_the_target(
    depth: int,
    running: int,
    processes: int,
    rate: float,
    target_s: float,
    drain_s: float,
    recommended: int,
    advice: str,
) -> None:
    row = need(depth=depth, running=running, processes=processes, rate_per_s=rate)
    recommend(row, target_s=target_s)
    assert row.drain_s == pytest.approx(drain_s)
    assert row.recommended_processes == recommended
    assert row.advice == advice


@pytest.mark.parametrize(
    ("fields", "advice"),
    [
        ({"depth": 5, "processes": 0}, "no worker consumes this queue"),
        ({"depth": 5, "processes": 2, "rate_per_s": 0.0}, "no job of this queue finished"),
        ({"depth": 5, "processes": 2, "rate_per_s": 1.0, "paused": True}, "paused"),
    ],
)
def test_no_figure_without_consumers_a_rate_or_while_paused(
    fields: dict[str, object], advice: str
) -> None:
    row = need(**fields)
    recommend(row, target_s=300)
    assert row.recommended_processes is None
    assert row.advice.startswith(advice)


PREFORK = WorkerView("w1@h", "prefork", 2, ["default"], None)
AUTO = WorkerView("w2@h", "prefork", 3, ["default", "slow"], {"max": 8, "min": 2})
SOLO = WorkerView("w3@h", "solo", 1, ["default"], None)


def test_plan_turns_each_option_into_one_command() -> None:
    settings = load_settings(broker_url="redis://127.0.0.1:6379/0")
    fleet = [PREFORK, AUTO, SOLO]
    grow = plan(settings, fleet, worker="w1@h", grow=3)
    assert (grow.command, grow.arguments) == ("pool_grow", {"n": 3})
    assert grow.summary == "grow w1@h from 2 to 5 processes"
    shrink = plan(settings, fleet, worker="w1@h", shrink=1)
    assert (shrink.command, shrink.arguments) == ("pool_shrink", {"n": 1})
    bounds = plan(settings, fleet, worker="w2@h", autoscale=(10, 1))
    assert (bounds.command, bounds.arguments) == ("autoscale", {"max": 10, "min": 1})
    add = plan(settings, fleet, worker="w1@h", add_queue="slow")
    assert (add.command, add.arguments) == ("add_consumer", {"queue": "slow"})
    cancel = plan(settings, fleet, worker="w2@h", cancel_queue="slow")
    assert (cancel.command, cancel.arguments) == ("cancel_consumer", {"queue": "slow"})


@pytest.mark.parametrize(
    ("broker", "worker", "asked", "message"),
    [
        ("redis", "w3@h", {"grow": 1}, "solo pool, which cannot grow or shrink"),
        ("redis", "w2@h", {"grow": 1}, "autoscales: change its bounds"),
        ("redis", "w1@h", {"shrink": 2}, "can shrink by at most 1"),
        ("redis", "w1@h", {"autoscale": (4, 1)}, "not started with --autoscale"),
        ("amqp", "w2@h", {"autoscale": (4, 1)}, "quorum queues cannot autoscale"),
        ("redis", "w2@h", {"autoscale": (2, 4)}, "1 <= MIN <= MAX"),
        ("redis", "w1@h", {"add_queue": "default"}, "consumes 'default' already"),
        ("redis", "w1@h", {"cancel_queue": "default"}, "only queue"),
        ("redis", "w9@h", {"grow": 1}, "no worker named 'w9@h'"),
        ("redis", "w1@h", {}, "exactly one of"),
    ],
)
def test_plan_refuses_what_the_worker_or_broker_cannot_do(
    broker: str, worker: str, asked: dict[str, object], message: str
) -> None:
    url = "redis://127.0.0.1:6379/0" if broker == "redis" else "amqp://guest@127.0.0.1//"
    settings = load_settings(broker_url=url, queue_type="quorum")
    with pytest.raises(UsageError, match=message):
        plan(settings, [PREFORK, AUTO, SOLO], worker=worker, **asked)  # type: ignore[arg-type]
