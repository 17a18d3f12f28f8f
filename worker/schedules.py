"""Periodic jobs: when they tick, and what happens to missed and overlapping ticks.

A :class:`Schedule` is pure data and pure arithmetic; the relay's leader acts on it
(:mod:`worker.scheduler`) and the ledger makes each tick's job unique
(:mod:`worker.ledger.schedules`).

**Ticks.** ``every(...)`` ticks at the multiples of its period since the Unix epoch, in
UTC: every process computes the same instants whenever it started. ``cron(...)`` ticks
as its expression says (croniter), read in the schedule's time zone (``zoneinfo``). Across
a daylight-saving change:

- a local time that does not exist (spring forward: 02:30 in Europe/Berlin on the last
  Sunday of March) ticks once, at the first instant after the gap (03:00 local);
- a local time that happens twice (fall back: 02:30 on the last Sunday of October) ticks
  once, at its first occurrence, when the expression names its hours (``30 2 * * *``);
  an expression whose hour field is ``*`` (``*/15 * * * *``) keeps ticking by the real
  clock through the repeated hour, so it ticks at both occurrences.

**Missed ticks.** A tick handled more than ``grace_s`` seconds after its time is *missed*
(everything was down, or the ledger was unreachable). The default grace (60 s) outlasts a
leader failover (a lease of :data:`~worker.constants.LEADER_LEASE_S` plus a renewal),
so a failover alone misses nothing. What becomes of missed ticks is ``catch_up``:

- ``skip``: nothing; only on-time ticks run;
- ``once``: one job for all of them (the newest missed tick's);
- ``all``: one job each for those within ``window_s`` of now (at most
  :data:`CATCH_UP_LIMIT`, the newest); older ones are dropped.

**Overlap.** ``overlap="skip"`` records a tick without a job while the schedule's previous
job is still queued, scheduled or running; ``allow`` enqueues regardless.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

CatchUp = Literal["skip", "once", "all"]
Overlap = Literal["skip", "allow"]

DEFAULT_GRACE_S = 60.0
"""A tick later than this is missed: longer than a leader failover (lease 5 s + renewal)."""
DEFAULT_WINDOW_S = 86_400.0
"""``catch_up="all"``: missed ticks older than this (a day) are dropped."""
CATCH_UP_LIMIT = 100
"""``catch_up="all"``: at most this many jobs for missed ticks in one go (the newest)."""
MISSED_COUNT_LIMIT = 10_000
"""Missed cron ticks counted one by one, at most (beyond it the count is a lower bound)."""
MIN_PERIOD_S = 1.0

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_PERIOD = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a periodic job ticks (a cron expression in a time zone, or a fixed period),
    what its job's payload is, and its catch-up and overlap policies.

    Built by :func:`cron` or :func:`every`; raises :class:`ValueError` for a bad expression,
    time zone, period or policy.
    """

    cron: str | None = None
    every_s: float | None = None
    tz: str = "UTC"
    catch_up: CatchUp = "skip"
    overlap: Overlap = "skip"
    payload: dict[str, Any] = field(default_factory=dict)
    grace_s: float = DEFAULT_GRACE_S
    window_s: float = DEFAULT_WINDOW_S

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every_s is None):
            raise ValueError("a schedule needs a cron expression or a period, not both")
        if self.every_s is not None and not (
            math.isfinite(self.every_s) and self.every_s >= MIN_PERIOD_S
        ):
            raise ValueError(f"a period must be at least {MIN_PERIOD_S:g} s, got {self.every_s}")
        zone(self.tz)
        if self.cron is not None:
            _check_cron(self.cron)
        if self.catch_up not in get_args(CatchUp):
            raise ValueError(f"catch_up must be skip, once or all, got {self.catch_up!r}")
        if self.overlap not in get_args(Overlap):
            raise ValueError(f"overlap must be skip or allow, got {self.overlap!r}")
        if not isinstance(self.payload, dict):
            raise ValueError("a schedule's payload must be a JSON object")
        if not self.grace_s > 0:
            raise ValueError(f"grace_s must be > 0, got {self.grace_s}")
        if not self.window_s >= self.grace_s:
            raise ValueError(f"window_s must be >= grace_s, got {self.window_s}")

    def describe(self) -> str:
        """The schedule as one line: ``every 300s`` or ``cron 0 * * * * Europe/Berlin``,
        then its policies (kept in the ledger; shown by ``conveyor schedules list``)."""
        when = f"every {self.every_s:g}s" if self.every_s is not None else f"cron {self.cron}"
        if self.cron is not None and self.tz != "UTC":
            when += f" {self.tz}"
        return f"{when} catch_up={self.catch_up} overlap={self.overlap} grace={self.grace_s:g}s"

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment`` (an aware datetime), in UTC."""
        if self.every_s is not None:
            seconds = moment.timestamp()
            count = math.floor(seconds / self.every_s) + 1
            return datetime.fromtimestamp(count * self.every_s, UTC)
        return next(self._cron_ticks(moment))

    def ticks(self, start: datetime, until: datetime, *, limit: int) -> list[datetime]:
        """The ticks ``t`` with ``start <= t <= until``, the first ``limit`` of them."""
        found: list[datetime] = []
        tick = self.next_after(start - timedelta(microseconds=1))
        while tick <= until and len(found) < limit:
            found.append(tick)
            tick = self.next_after(tick)
        return found

    def count(self, start: datetime, end: datetime) -> int:
        """How many ticks ``t`` with ``start <= t < end`` (cron: at most
        :data:`MISSED_COUNT_LIMIT`)."""
        if end <= start:
            return 0
        if self.every_s is not None:
            first = math.ceil(start.timestamp() / self.every_s)
            last = math.ceil(end.timestamp() / self.every_s)  # the first at or after end
            return max(last - first, 0)
        limit = MISSED_COUNT_LIMIT
        return len(self.ticks(start, end - timedelta(microseconds=1), limit=limit))

    def last_before(self, moment: datetime, *, since: datetime) -> datetime | None:
        """The newest tick ``t`` with ``since <= t < moment``, if any."""
        if self.every_s is not None:
            count = math.ceil(moment.timestamp() / self.every_s) - 1
            tick = datetime.fromtimestamp(count * self.every_s, UTC)
            return tick if tick >= since else None
        from croniter import croniter

        hourly = _hour_field(str(self.cron)) == "*"
        iterator = croniter(str(self.cron), moment.astimezone(zone(self.tz)))
        while True:
            local: datetime = iterator.get_prev(datetime)
            if local < since:
                return None
            if hourly or not _second_occurrence(local):
                return local.astimezone(UTC)

    def recent(self, since: datetime, until: datetime, *, limit: int) -> list[datetime]:
        """The newest ``limit`` ticks ``t`` with ``since <= t <= until``, oldest first."""
        found: list[datetime] = []
        moment = until + timedelta(microseconds=1)
        while len(found) < limit:
            tick = self.last_before(moment, since=since)
            if tick is None:
                break
            found.append(tick)
            moment = tick
        return found[::-1]

    def _cron_ticks(self, moment: datetime) -> Iterator[datetime]:
        """Cron ticks after ``moment`` in UTC, a repeated local time once unless the hour
        field is ``*`` (see the module's docstring)."""
        from croniter import croniter

        expression = str(self.cron)
        hourly = _hour_field(expression) == "*"
        iterator = croniter(expression, moment.astimezone(zone(self.tz)))
        while True:
            local: datetime = iterator.get_next(datetime)
            if not hourly and _second_occurrence(local):
                continue  # 02:30 after falling back: it ran at its first occurrence
            yield local.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Due:
    """What to do with a schedule's due ticks (:func:`due`): a job for each tick of
    ``run``, ``missed`` ticks dropped, and the next tick to wait for."""

    run: tuple[datetime, ...]
    missed: int
    next_tick: datetime


def due(schedule: Schedule, *, next_tick: datetime, now: datetime) -> Due:
    """Decide on every tick from ``next_tick`` (the first one not handled yet) to ``now``.

    On-time ticks (within ``grace_s`` of now) run; older ones are missed, and the
    catch-up policy says which of those still run (see the module's docstring).
    """
    following = schedule.next_after(now)
    if next_tick > now:
        return Due((), 0, next_tick)
    on_time_from = now - timedelta(seconds=schedule.grace_s)
    kept_from = on_time_from
    if schedule.catch_up == "all":
        kept_from = now - timedelta(seconds=schedule.window_s)
    dropped = schedule.count(next_tick, kept_from)
    run: list[datetime] = []
    if schedule.catch_up == "once" and dropped:
        newest = schedule.last_before(on_time_from, since=next_tick)
        if newest is not None:
            run.append(newest)
            dropped -= 1
    start = max(next_tick, kept_from)
    kept = schedule.recent(start, now, limit=CATCH_UP_LIMIT)
    dropped += max(schedule.count(start, now + timedelta(microseconds=1)) - len(kept), 0)
    return Due((*run, *kept), dropped, following)


def tick_key(name: str, tick: datetime) -> str:
    """The idempotency key of schedule ``name``'s job for ``tick``: one job per tick."""
    return f"schedule:{name}:{tick.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


def zone(name: str) -> ZoneInfo:
    """The time zone ``name`` (IANA, e.g. ``Europe/Berlin``); ValueError if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name like Europe/Berlin)") from None


def parse_period(period: str | float) -> float:
    """``"90s"``, ``"5m"``, ``"2h"``, ``"1d"``, ``"30"`` or a number, in seconds."""
    if isinstance(period, bool):
        raise ValueError(f"bad period {period!r}")
    if isinstance(period, int | float):
        return float(period)
    found = _PERIOD.match(str(period))
    if found is None:
        raise ValueError(f"bad period {period!r}: a number with s, m, h or d, like 5m")
    return float(found[1]) * _UNITS_S[found[2] or "s"]


def cron(expression: str, *, tz: str = "UTC", **policies: Any) -> Schedule:
    """A schedule that ticks as the cron ``expression`` says, read in time zone ``tz``.

    ``policies``: ``catch_up``, ``overlap``, ``payload``, ``grace_s``, ``window_s``.
    """
    return Schedule(cron=expression, tz=tz, **policies)


def every(period: str | float, **policies: Any) -> Schedule:
    """A schedule that ticks every ``period`` (``"5m"``, ``"30s"``, or seconds), at the
    multiples of the period since the Unix epoch (UTC)."""
    return Schedule(every_s=parse_period(period), **policies)


@dataclass(frozen=True, slots=True)
class Declared:
    """One periodic job as code or settings declare it: its name, task and queue (None:
    the task's own) and when it runs."""

    name: str
    task: str
    queue: str | None
    schedule: Schedule


SETTING_KEYS = frozenset(
    {"name", "task", "every", "cron", "tz", "payload", "queue", "catch_up", "overlap"}
    | {"grace_s", "window_s"}
)


def parse_declared(entries: Any) -> list[Declared]:
    """``CONVEYOR_SCHEDULES`` (a JSON list of objects) as schedules; ValueError naming the
    entry at fault: ``[{"name": "nightly", "task": "reports.build", "cron": "0 3 * * *",
    "tz": "Europe/Berlin"}]``. ``name`` defaults to the task's name."""
    if not isinstance(entries, list):
        raise ValueError("expected a JSON list of objects")
    declared: list[Declared] = []
    for index, entry in enumerate(entries):
        try:
            declared.append(_declared(entry))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"schedule {index}: {exc}") from None
    names = [one.name for one in declared]
    doubled = sorted({name for name in names if names.count(name) > 1})
    if doubled:
        raise ValueError(f"schedule names must be unique: {', '.join(doubled)}")
    return declared


def _declared(entry: Any) -> Declared:
    if not isinstance(entry, Mapping):
        raise ValueError("expected an object")
    unknown = sorted(set(entry) - SETTING_KEYS)
    if unknown:
        raise ValueError(f"unknown keys {', '.join(unknown)}")
    task = entry.get("task")
    if not isinstance(task, str) or not task:
        raise ValueError("task is required (a job's name)")
    name = entry.get("name", task)
    if not isinstance(name, str) or not 1 <= len(name) <= 200:
        raise ValueError("name must have 1 to 200 characters")
    queue = entry.get("queue")
    if queue is not None and (not isinstance(queue, str) or not 1 <= len(queue) <= 200):
        raise ValueError("queue must have 1 to 200 characters")
    policies = {
        key: entry[key]
        for key in ("catch_up", "overlap", "payload", "grace_s", "window_s")
        if key in entry
    }
    if ("every" in entry) == ("cron" in entry):
        raise ValueError("give every or cron, not both")
    if "every" in entry:
        if "tz" in entry:
            raise ValueError("tz applies to cron only")
        schedule = every(entry["every"], **policies)
    else:
        schedule = cron(entry["cron"], tz=entry.get("tz", "UTC"), **policies)
    return Declared(name, task, queue, schedule)


def _check_cron(expression: str) -> None:
    from croniter import croniter

    if not isinstance(expression, str) or len(expression.split()) != 5:
        raise ValueError(f"bad cron expression {expression!r}: five fields, like 0 * * * *")
    if not croniter.is_valid(expression):
        raise ValueError(f"bad cron expression {expression!r}")


def _hour_field(expression: str) -> str:
    return expression.split()[1]


def _second_occurrence(local: datetime) -> bool:
    """Whether ``local`` is the second of two instants with the same wall time (fold=1)."""
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()
