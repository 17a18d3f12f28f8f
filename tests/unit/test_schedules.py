"""Periodic jobs' arithmetic: ticks, time zones and DST, catch-up, and their settings."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from conveyor.config import load_settings
from conveyor.worker.errors import ConfigError
from conveyor.worker.jobs import JobContext, job
from conveyor.worker.schedules import (
    CATCH_UP_LIMIT,
    Schedule,
    cron,
    due,
    every,
    parse_declared,
    parse_period,
    tick_key,
)

pytestmark = pytest.mark.unit


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "seconds"),
    [("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86_400), ("45", 45), (90, 90), ("1.5m", 90)],
)
def test_periods(period: str | float, seconds: float) -> None:
    assert parse_period(period) == seconds


@pytest.mark.parametrize("period", ["5x", "", "m", "-5s", "five minutes"])
def test_bad_periods_say_what_is_expected(period: str) -> None:
    with pytest.raises(ValueError, match="bad period"):
        every(period)


def test_a_period_under_a_second_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 s"):
        every(0.5)


def test_every_ticks_on_multiples_of_its_period_since_the_epoch() -> None:
    five = every("5m")
    assert five.next_after(utc(2026, 1, 1, 10, 2, 13)) == utc(2026, 1, 1, 10, 5)
    assert five.next_after(utc(2026, 1, 1, 10, 5)) == utc(2026, 1, 1, 10, 10), "strictly after"
    seven = every("7s")  # not a divisor of a minute: still the same instants everywhere
    tick = seven.next_after(utc(2026, 1, 1))
    assert tick.timestamp() % 7 == 0
    assert seven.ticks(tick, tick + timedelta(seconds=21), limit=10) == [
        tick + timedelta(seconds=7 * i) for i in range(4)
    ]


@pytest.mark.parametrize(
    ("expression", "tz", "error"),
    [
        ("61 * * * *", "UTC", "bad cron expression"),
        ("* * * *", "UTC", "five fields"),
        ("0 * * * * *", "UTC", "five fields"),
        ("0 * * * *", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_cron_schedules(expression: str, tz: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        cron(expression, tz=tz)


@pytest.mark.parametrize(
    ("policies", "error"),
    [
        ({"catch_up": "twice"}, "catch_up"),
        ({"overlap": "queue"}, "overlap"),
        ({"grace_s": 0}, "grace_s"),
        ({"grace_s": 60, "window_s": 30}, "window_s"),
    ],
)
def test_bad_policies(policies: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        every("1m", **policies)


def test_cron_reads_its_expression_in_its_time_zone() -> None:
    hourly = cron("0 * * * *", tz="Europe/Berlin")
    # 09:00 Berlin in winter is 08:00 UTC; India is +05:30, so "0 *" falls on :30 UTC.
    assert cron("0 9 * * *", tz="Europe/Berlin").next_after(utc(2026, 1, 5)) == utc(2026, 1, 5, 8)
    assert cron("0 * * * *", tz="Asia/Kolkata").next_after(utc(2026, 1, 5, 0, 1)) == utc(
        2026, 1, 5, 0, 30
    )
    assert hourly.describe() == (
        "cron 0 * * * * Europe/Berlin catch_up=skip overlap=skip grace=60s"
    )


def test_spring_forward_a_nonexistent_local_time_ticks_once_after_the_gap() -> None:
    # Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    daily = cron("30 2 * * *", tz="Europe/Berlin")
    ticks = daily.ticks(utc(2026, 3, 28), utc(2026, 3, 31), limit=10)
    assert ticks == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST, the first instant after the gap
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    hourly = cron("0 * * * *", tz="Europe/Berlin")
    # 01:00 CET, then 03:00 CEST: the day has 23 hours, so 23 hourly ticks.
    day = hourly.ticks(utc(2026, 3, 28, 23), utc(2026, 3, 29, 21, 59), limit=30)
    assert len(day) == 23
    assert day[1] - day[0] == timedelta(hours=1)


def test_fall_back_a_repeated_local_time_ticks_once_unless_the_hour_is_a_wildcard() -> None:
    # Europe/Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    daily = cron("30 2 * * *", tz="Europe/Berlin")
    ticks = daily.ticks(utc(2026, 10, 24), utc(2026, 10, 27), limit=10)
    assert ticks == [
        utc(2026, 10, 24, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first of the two
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]
    assert daily.last_before(utc(2026, 10, 25, 2), since=utc(2026, 10, 1)) == utc(
        2026, 10, 25, 0, 30
    )
    # A wildcard hour keeps the real clock: the day has 25 hours, so 25 hourly ticks.
    hourly = cron("0 * * * *", tz="Europe/Berlin")
    day = hourly.ticks(utc(2026, 10, 24, 22), utc(2026, 10, 25, 22, 59), limit=30)
    assert len(day) == 25
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(day))


NOW = utc(2026, 6, 1, 12, 0, 0)


def missed_since(schedule: Schedule, seconds: float) -> datetime:
    """The next tick the ledger would hold had everything been down for ``seconds``."""
    return schedule.next_after(NOW - timedelta(seconds=seconds + 0.001))


@pytest.mark.parametrize(
    ("catch_up", "down_s", "runs", "missed"),
    [
        # A 10 s schedule with a 3 s grace, down for 35 s: ticks at -30, -20, -10, 0.
        ("skip", 35, [0], 3),
        ("once", 35, [-10, 0], 2),  # one job for the three missed (the newest's), plus 0
        ("all", 35, [-30, -20, -10, 0], 0),
        ("skip", 0, [0], 0),  # on time: every policy runs it
        ("once", 0, [0], 0),
        ("all", 0, [0], 0),
        ("once", 15, [-10, 0], 0),  # one missed tick: its own job
    ],
)
def test_catch_up_policies(catch_up: str, down_s: float, runs: list[int], missed: int) -> None:
    schedule = every("10s", catch_up=catch_up, grace_s=3, window_s=3600)
    decided = due(schedule, next_tick=missed_since(schedule, down_s), now=NOW)
    assert decided.run == tuple(NOW + timedelta(seconds=s) for s in runs)
    assert decided.missed == missed
    assert decided.next_tick == NOW + timedelta(seconds=10)


def test_catch_up_all_keeps_its_window_and_its_limit() -> None:
    windowed = every("10s", catch_up="all", grace_s=3, window_s=25)
    decided = due(windowed, next_tick=missed_since(windowed, 60), now=NOW)
    assert decided.run == tuple(NOW + timedelta(seconds=s) for s in (-20, -10, 0))
    assert decided.missed == 4  # -60 .. -30 are older than the window

    busy = every("1s", catch_up="all", grace_s=3, window_s=86_400)
    decided = due(busy, next_tick=missed_since(busy, 3600), now=NOW)
    assert len(decided.run) == CATCH_UP_LIMIT
    assert decided.run[-1] == NOW, "the newest ones are kept"
    assert decided.missed == 3601 - CATCH_UP_LIMIT


def test_nothing_is_due_before_the_next_tick() -> None:
    schedule = every("10s")
    later = NOW + timedelta(seconds=5)
    assert due(schedule, next_tick=later, now=NOW).run == ()
    assert due(schedule, next_tick=later, now=NOW).next_tick == later


def test_a_cron_catch_up_once_runs_the_newest_missed_tick() -> None:
    hourly = cron("0 * * * *", catch_up="once")
    decided = due(hourly, next_tick=utc(2026, 6, 1, 8), now=utc(2026, 6, 1, 11, 30))
    assert decided.run == (utc(2026, 6, 1, 11),)
    assert decided.missed == 3
    assert decided.next_tick == utc(2026, 6, 1, 12)


def test_the_tick_key_names_the_schedule_and_the_instant_in_utc() -> None:
    tick = cron("0 3 * * *", tz="Europe/Berlin").next_after(utc(2026, 1, 1))
    assert tick_key("nightly", tick) == "schedule:nightly:2026-01-01T02:00:00.000000Z"


def test_settings_entries() -> None:
    parsed = parse_declared(
        [
            {"task": "reports.build", "cron": "0 3 * * *", "tz": "Europe/Berlin"},
            {"name": "ping", "task": "net.ping", "every": "30s", "queue": "net", "payload": {}},
        ]
    )
    assert [(one.name, one.task, one.queue) for one in parsed] == [
        ("reports.build", "reports.build", None),
        ("ping", "net.ping", "net"),
    ]
    assert parsed[1].schedule.every_s == 30


@pytest.mark.parametrize(
    ("entries", "error"),
    [
        ('{"task": "a"}', "expected a JSON list of objects"),
        ('[{"task": "a"}]', "schedule 0: give every or cron"),
        ('[{"task": "a", "every": "1m", "cron": "* * * * *"}]', "give every or cron"),
        ('[{"task": "a", "every": "5x"}]', "schedule 0: bad period '5x'"),
        ('[{"task": "a", "cron": "0 * * *"}]', "bad cron expression"),
        ('[{"task": "a", "cron": "0 * * * *", "tz": "Nowhere/X"}]', "unknown time zone"),
        ('[{"task": "a", "every": "1m", "tz": "UTC"}]', "tz applies to cron only"),
        ('[{"every": "1m"}]', "task is required"),
        ('[{"task": "a", "every": "1m", "color": 1}]', "unknown keys color"),
        ('[{"task": "a", "every": "1m"}, {"task": "a", "every": "2m"}]', "unique: a"),
        ("[{", "not valid JSON"),
    ],
)
def test_settings_errors_name_the_variable_and_the_entry(
    monkeypatch: pytest.MonkeyPatch, entries: str, error: str
) -> None:
    monkeypatch.setenv("CONVEYOR_SCHEDULES", entries)
    with pytest.raises(ConfigError, match="CONVEYOR_SCHEDULES") as raised:
        load_settings()
    assert error in str(raised.value)


def test_a_job_declares_its_schedule() -> None:
    @job(name="test.unit.periodic", every="5m")
    def periodic(ctx: JobContext, payload: dict[str, object]) -> None:
        return None

    from conveyor.worker.jobs import REGISTRY

    try:
        assert REGISTRY["test.unit.periodic"].schedule == every(300)
        with pytest.raises(ValueError, match="not both"):
            job(name="test.unit.both", every="5m", schedule=cron("* * * * *"))
    finally:
        REGISTRY.pop("test.unit.periodic", None)
