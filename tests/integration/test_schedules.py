"""Periodic jobs: exactly one job per tick, whoever leads, and catch-up after an outage.

Each test declares its schedules in ``CONVEYOR_SCHEDULES`` under names of its own, on a
ledger of this module's own (the session's relays never see them), on Redis. The first
tests drive the scheduler in-process on a clock of their own; the last ones run real
workers and `conveyor relay` processes on the real clock, and kill them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from conveyor.worker import scheduler as scheduler_module
from conveyor.worker.api.app import create_api
from conveyor.worker.api.keys import Scope, create_key
from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import get_job
from conveyor.worker.leader import RELAY_LEASE
from conveyor.worker.models import AuditEntry, Job, utcnow
from conveyor.worker.models import Schedule as ScheduleRow
from conveyor.worker.scheduler import Scheduler
from conveyor.worker.schedules import every, tick_key
from tests.conftest import (
    BROKERS,
    Processes,
    conveyor_env,
    counter_value,
    delete_queues,
    effects_per_job,
    kill_group,
    new_counter,
    producer_app,
    run_cli,
    state_of,
    wait_for,
)
from tests.integration.test_api_harness import assert_problem

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker_url() -> str:
    return BROKERS["redis"]


@pytest.fixture
def queue(broker_url: str, own_ledger_url: str) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    delete_queues(broker_url, [name], pg_url=own_ledger_url)


def entry(task: str, queue: str, **fields: Any) -> dict[str, Any]:
    """A ``CONVEYOR_SCHEDULES`` entry under a name no other test uses."""
    return {"name": f"sched-{uuid.uuid4().hex[:8]}", "task": task, "queue": queue, **fields}


@pytest.fixture
def make_app(broker_url: str, own_ledger_url: str, tmp_path: Path) -> Iterator[Any]:
    built: list[ConveyorApp] = []

    def make(*schedules: dict[str, Any]) -> ConveyorApp:
        app = producer_app(broker_url, own_ledger_url, tmp_path, schedules=list(schedules))
        built.append(app)
        return app

    yield make
    for app in built:
        app.ledger.dispose()
        app.close()


class Clock:
    """The scheduler's clock, moved by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, start: datetime) -> None:
        self.now = start
        monkeypatch.setattr(scheduler_module, "utcnow", lambda: self.now)


def keyed_jobs(app: ConveyorApp, name: str) -> dict[str, Job]:
    """The jobs of schedule ``name``'s ticks, by idempotency key."""
    with app.ledger.session() as session:
        rows = session.scalars(
            select(Job).where(Job.idempotency_key.like(f"schedule:{name}:%"))
        ).all()
    return {str(row.idempotency_key): row for row in rows}


def row_of(app: ConveyorApp, name: str) -> ScheduleRow:
    view = app.ledger.schedule(name)
    assert view is not None
    return view.row


def test_two_leaders_at_one_tick_write_one_job(
    make_app: Any, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # overlap="allow": the unique key alone stands between the second leader and a job.
    declared = entry("test.count", queue, every="10s", overlap="allow", payload={"counter": "-"})
    name = declared["name"]
    first, second = make_app(declared), make_app(declared)
    tick = every("10s").next_after(utcnow())
    clock = Clock(monkeypatch, tick - timedelta(seconds=1))
    leaders = Scheduler(first), Scheduler(second)
    assert leaders[0].run_due() == 0, "synced; the first tick is the next one"
    assert row_of(first, name).next_tick_at == tick

    clock.now = tick + timedelta(seconds=0.2)
    assert leaders[0].run_due() == 1
    assert leaders[1].run_due() == 0, "the tick is handled: nothing is due"
    # A second leader that read the schedule before the first one moved it on: the
    # ledger's unique key refuses its job.
    with first.ledger.transaction() as session:
        session.execute(
            update(ScheduleRow).where(ScheduleRow.name == name).values(next_tick_at=tick)
        )
    assert leaders[1].run_due() == 0
    jobs = keyed_jobs(first, name)
    assert list(jobs) == [tick_key(name, tick)]
    job = next(iter(jobs.values()))
    assert (job.state, job.run_at, job.queue) == ("scheduled", tick, queue)
    row = row_of(first, name)
    assert (row.last_job_id, row.last_outcome) == (job.id, "duplicate")
    assert row.next_tick_at == tick + timedelta(seconds=10)


def test_overlap_pause_and_schedules_this_process_does_not_define(
    make_app: Any, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    skip = entry("test.count", queue, every="10s", payload={"counter": "-"})
    allow = entry("test.count", queue, every="10s", overlap="allow", payload={"counter": "-"})
    paused = entry("test.count", queue, every="10s", catch_up="all", payload={"counter": "-"})
    app = make_app(skip, allow, paused)
    stranger = make_app()  # a relay of another deployment: it defines none of them
    tick = every("10s").next_after(utcnow())
    clock = Clock(monkeypatch, tick - timedelta(seconds=1))
    leader = Scheduler(app)
    leader.run_due()
    assert app.ledger.pause_schedule(paused["name"], actor="tester") is True
    assert app.ledger.pause_schedule(paused["name"], actor="tester") is False

    for n in range(3):
        clock.now = tick + timedelta(seconds=10 * n + 0.1)
        assert Scheduler(stranger).run_due() == 0
        leader.run_due()
    # The first tick's job is still scheduled (nothing publishes it): the later ticks of
    # the "skip" schedule overlap it; the "allow" one enqueues each.
    assert len(keyed_jobs(app, skip["name"])) == 1
    assert row_of(app, skip["name"]).last_outcome == "skipped_overlap"
    labels = {"schedule": skip["name"], "outcome": "skipped_overlap"}
    assert REGISTRY.get_sample_value("conveyor_schedule_ticks_total", labels) == 2
    assert len(keyed_jobs(app, allow["name"])) == 3
    assert keyed_jobs(app, paused["name"]) == {}
    assert row_of(app, paused["name"]).last_outcome == "paused"

    # Resumed, it ticks from now on: the paused ticks never run, catch_up="all" or not.
    assert app.ledger.resume_schedule(paused["name"], actor="tester") is True
    clock.now = tick + timedelta(seconds=30.1)
    leader.run_due()
    assert list(keyed_jobs(app, paused["name"])) == [
        tick_key(paused["name"], tick + timedelta(seconds=30))
    ]
    assert app.ledger.pause_schedule("no-such-schedule", actor="tester") is None
    with app.ledger.session() as session:
        actions = session.scalars(
            select(AuditEntry.action).where(
                AuditEntry.filters["schedule"].as_string() == paused["name"]
            )
        ).all()
    assert sorted(actions) == ["schedule_pause", "schedule_resume"]


def test_a_changed_definition_starts_from_its_own_next_tick(
    make_app: Any, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    declared = entry("test.count", queue, every="10s", payload={"counter": "-"})
    tick = every("60s").next_after(utcnow())
    clock = Clock(monkeypatch, tick - timedelta(seconds=15))
    Scheduler(make_app(declared)).run_due()
    app = make_app({**declared, "payload": {"counter": "+"}})
    Scheduler(app).run_due()
    row = row_of(app, declared["name"])
    assert (row.payload, row.next_tick_at) == ({"counter": "+"}, tick - timedelta(seconds=10))
    assert not row.paused
    app.ledger.pause_schedule(declared["name"], actor="tester")
    changed = make_app({**declared, "every": "60s"})
    Scheduler(changed).run_due()
    row = row_of(app, declared["name"])
    assert row.spec.startswith("every 60s")
    assert (row.next_tick_at, row.paused) == (tick, True), "a new period, the pause kept"
    assert clock.now < tick


def test_cli_and_api_list_pause_resume_and_run_now(
    make_app: Any,
    queue: str,
    broker_url: str,
    own_ledger_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    declared = entry("test.count", queue, cron="0 3 * * *", tz="Europe/Berlin")
    declared["payload"] = {"counter": "-"}
    name = declared["name"]
    app = make_app(declared)
    Scheduler(app).run_due()
    env = conveyor_env(broker_url, own_ledger_url, tmp_path) | {"COLUMNS": "200"}

    listed = run_cli("schedules", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout
    assert "cron 0 3 * * * Europe/Berlin" in listed.stdout
    table = run_cli("queues", env=env)
    assert table.returncode == 0, table.stderr
    assert name in table.stdout, "conveyor queues lists the schedules below its table"
    shown = run_cli("queues", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    ours = [s for s in json.loads(shown.stdout)["schedules"] if s["name"] == name]
    assert ours[0]["next_tick_at"].endswith(("02:00:00+00:00", "01:00:00+00:00"))
    assert ours[0]["last_tick_at"] is None

    assert run_cli("schedules", "pause", name, env=env).stdout.strip() == f"paused {name}"
    assert row_of(app, name).paused
    assert run_cli("schedules", "resume", name, env=env).stdout.strip() == f"resumed {name}"
    ran = run_cli("schedules", "run-now", name, "--json", env=env)
    assert ran.returncode == 0, ran.stderr
    job_id = json.loads(ran.stdout)["job_id"]
    assert state_of(app, job_id) == "queued", "published at once, like any enqueue"
    assert row_of(app, name).last_job_id == job_id
    unknown = run_cli("schedules", "pause", "no-such-schedule", env=env)
    assert unknown.returncode == 1
    assert "no schedule 'no-such-schedule'" in unknown.stderr

    _, reader = create_key(app.ledger, f"r-{uuid.uuid4().hex[:6]}", [Scope.READ])
    _, operator = create_key(app.ledger, f"o-{uuid.uuid4().hex[:6]}", [Scope.OPERATE])
    client = TestClient(create_api(app), base_url="http://127.0.0.1")
    as_reader = {"Authorization": f"Bearer {reader}"}
    as_operator = {"Authorization": f"Bearer {operator}"}
    listed_api = client.get("/v1/schedules", headers=as_reader)
    assert listed_api.status_code == 200
    view = next(s for s in listed_api.json()["schedules"] if s["name"] == name)
    assert (view["last_job_id"], view["last_outcome"]) == (job_id, "manual")
    assert view["last_job_state"] == "queued"
    assert client.post(f"/v1/schedules/{name}/pause", headers=as_reader).status_code == 403
    paused = client.post(f"/v1/schedules/{name}/pause", headers=as_operator)
    assert paused.json() == {"schedule": name, "paused": True, "changed": True}
    resumed = client.post(f"/v1/schedules/{name}/resume", headers=as_operator)
    assert resumed.json() == {"schedule": name, "paused": False, "changed": True}
    run = client.post(f"/v1/schedules/{name}/run", headers=as_operator)
    assert run.status_code == 200
    assert get_job(run.json()["job_id"], app=app).task == "test.count"
    missing = client.post("/v1/schedules/nope/run", headers=as_operator)
    assert_problem(missing, 404)


PERIOD_S = 3


def ticks_of(app: ConveyorApp, name: str, *, succeeded: bool = True) -> list[datetime]:
    """The ticks for which schedule ``name`` has a job (that succeeded), in order."""
    prefix = f"schedule:{name}:"
    return sorted(
        datetime.fromisoformat(key.removeprefix(prefix))
        for key, job in keyed_jobs(app, name).items()
        if job.state == "succeeded" or not succeeded
    )


def leader_pid(app: ConveyorApp) -> int | None:
    """The pid of the process holding an unexpired relay lease (holder ``node:pid:tag``)."""
    lease = app.ledger.lease(RELAY_LEASE)
    if lease is None or lease.expires_at.timestamp() < time.time():
        return None
    return int(lease.holder.rsplit(":", 2)[1])


def sleep_until(moment: datetime) -> None:
    time.sleep(max((moment - utcnow()).total_seconds(), 0))


def every_tick(first: datetime, last: datetime) -> list[datetime]:
    return every(PERIOD_S).ticks(first, last, limit=1000)


def test_three_workers_and_two_relays_one_job_per_tick_through_a_leader_kill(
    broker_url: str,
    own_ledger_url: str,
    queue: str,
    make_app: Any,
    tmp_path: Path,
    processes: Processes,
) -> None:
    app = make_app()
    counter = new_counter(app)
    declared = entry(
        "test.count", queue, every=f"{PERIOD_S}s", overlap="allow", payload={"counter": counter}
    )
    name = declared["name"]
    env = conveyor_env(broker_url, own_ledger_url, tmp_path, schedules=json.dumps([declared]))
    relays = {p.pid: p for p in (processes.start(env, "relay", "--poll", "0.1") for _ in range(2))}
    for _ in range(3):
        processes.start(env, "worker", "-Q", queue, "-c", "1", "--pool", "solo")

    first = wait_for(lambda: ticks_of(app, name), timeout_s=90)[0]
    third = first + timedelta(seconds=2 * PERIOD_S)
    wait_for(lambda: ticks_of(app, name)[-1] >= third, timeout_s=60)
    assert ticks_of(app, name)[:3] == every_tick(first, third), "one job for each of three ticks"

    # Kill the leader half a second before a tick: the other relay takes over once the
    # lease runs out (5 s) and writes the late tick's job, once.
    killed_before = every(PERIOD_S).next_after(utcnow() + timedelta(seconds=1))
    sleep_until(killed_before - timedelta(seconds=0.5))
    leader = leader_pid(app)
    assert leader in relays, "one of the test's relays leads"
    kill_group(relays.pop(leader))
    last = killed_before + timedelta(seconds=PERIOD_S)
    wait_for(lambda: ticks_of(app, name)[-1] >= last, timeout_s=60)
    assert leader_pid(app) in relays, "the other relay leads now"

    ticks = ticks_of(app, name)
    assert ticks[: len(every_tick(first, last))] == every_tick(first, last)
    jobs = [job.id for job in keyed_jobs(app, name).values() if job.state == "succeeded"]
    assert set(effects_per_job(app, jobs).values()) == {1}, "each tick's job ran once"
    assert counter_value(app, counter) == len(jobs)


def test_everything_down_across_two_ticks_then_each_catch_up_policy_is_obeyed(
    broker_url: str,
    own_ledger_url: str,
    queue: str,
    make_app: Any,
    tmp_path: Path,
    processes: Processes,
) -> None:
    app = make_app()
    counter = new_counter(app)
    policies = {
        policy: entry(
            "test.count",
            queue,
            every=f"{PERIOD_S}s",
            catch_up=policy,
            grace_s=1,
            overlap="allow",
            payload={"counter": counter},
        )
        for policy in ("skip", "once", "all")
    }
    names = {policy: declared["name"] for policy, declared in policies.items()}
    env = conveyor_env(
        broker_url, own_ledger_url, tmp_path, schedules=json.dumps(list(policies.values()))
    )

    def start() -> list[Any]:
        return [
            processes.start(env, "relay", "--poll", "0.1"),
            processes.start(env, "worker", "-Q", queue, "-c", "1", "--pool", "solo"),
        ]

    running = start()
    wait_for(lambda: all(ticks_of(app, n) for n in names.values()), timeout_s=90)
    # Down half-way between two ticks, for two ticks and a half.
    sleep_until(every(PERIOD_S).next_after(utcnow()) + timedelta(seconds=PERIOD_S / 2))
    for process in running:
        kill_group(process)
    down_at = utcnow()
    time.sleep(2.5 * PERIOD_S)
    up_at = utcnow()
    start()

    def caught_up() -> bool:
        return all(
            ticks_of(app, n) and ticks_of(app, n)[-1] > up_at + timedelta(seconds=PERIOD_S)
            for n in names.values()
        )

    wait_for(caught_up, timeout_s=90)
    end = min(ticks_of(app, n)[-1] for n in names.values())
    ticks = {policy: [t for t in ticks_of(app, n) if t <= end] for policy, n in names.items()}
    down = [t for t in every_tick(ticks["skip"][0], end) if down_at < t < up_at]
    assert len(down) >= 2, "the outage spanned two ticks"

    skipped = ticks["skip"]
    assert not set(down) & set(skipped), "skip: no job for a tick missed while down"
    after = min(t for t in skipped if t > down_at)
    last_before = max(t for t in skipped if t < down_at)
    assert (after - last_before).total_seconds() >= 3 * PERIOD_S
    # once: the ticks missed while down make one job, the newest missed tick's: the tick
    # just before the first that ran on time. (Each policy is judged on its own jobs: under
    # load the first pass after the restart may come a tick later for one than expected.)
    period = timedelta(seconds=PERIOD_S)
    once = ticks["once"]
    before = max(t for t in once if t < down_at)
    resumed = [t for t in once if t > down_at]
    assert len([t for t in resumed if t < up_at]) <= 1, "once: at most one job while down"
    assert resumed[1] - resumed[0] == period, "once: the newest missed tick's job"
    assert resumed[1:] == every_tick(resumed[1], end), "once: then every tick"
    assert resumed[0] - before >= 2 * period, "once: the older missed ticks did not run"
    assert ticks["all"] == every_tick(ticks["all"][0], end), "all: a job for every tick"
    assert set(down) <= set(ticks["all"])
    total = sum(len(keyed_jobs(app, n)) for n in names.values())
    wait_for(lambda: counter_value(app, counter) == total, timeout_s=30)
