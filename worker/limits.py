"""Rate and concurrency limits that hold across the fleet (declared with ``@job``).

Both are enforced by the worker before an attempt starts, against state shared in the
ledger (:mod:`worker.ledger.limits` says how), so they hold across any number of workers:

- ``rate_limit="100/m"``: starts are spaced evenly, one per ``60/100`` s, per job or per
  ``rate_key(payload)``. A job whose slot is later waits in the ledger (``scheduled``,
  ``run_at`` = its slot) and its attempt is given back.
- ``concurrency=5``: at most five attempts run at once, per job or per
  ``concurrency_key(payload)``. A job whose key is full is parked (``scheduled``, never
  claimed) and the relay releases the oldest parked jobs as attempts end.

Why the ledger rather than Redis: ``ops/bench/limits.py`` measures both counters
(docs/jobs.md has the figures), and the ledger is there on every deployment and broker.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor.worker.errors import PayloadInvalid

KeyFunction = Callable[[dict[str, Any]], object]
"""Derives a limit's key from a job's payload (the message's kwargs, as a dict)."""

UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*([smhd])\s*$")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` starts per ``per_s`` seconds, spaced evenly, per job or per key."""

    count: int
    per_s: float
    key: KeyFunction | None = None

    @property
    def interval_s(self) -> float:
        """Seconds between two starts."""
        return self.per_s / self.count

    @classmethod
    def parse(cls, text: str, key: KeyFunction | None = None) -> RateLimit:
        """``"100/m"``, ``"10/s"``, ``"5/h"``, ``"1/d"`` or ``"30/10s"``; raises ValueError."""
        match = _RATE.match(text)
        if match is None:
            raise ValueError(
                f"rate_limit {text!r}: expected COUNT/UNIT such as '100/m', '10/s' or '30/10s'"
            )
        count, multiple, unit = int(match[1]), float(match[2] or 1), match[3]
        if count < 1 or multiple <= 0:
            raise ValueError(f"rate_limit {text!r}: the count and the period must be > 0")
        return cls(count=count, per_s=multiple * UNITS_S[unit], key=key)


@dataclass(frozen=True, slots=True)
class ConcurrencyLimit:
    """At most ``limit`` attempts running at once, per job or per key."""

    limit: int
    key: KeyFunction | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """A job's rate and concurrency limits, either of which may be absent."""

    rate: RateLimit | None = None
    concurrency: ConcurrencyLimit | None = None


NO_LIMITS = Limits()
"""A job with neither limit: its claim is the plain one."""


KEY_CHARS = 255
"""A limit key's longest stored form; a longer one is kept as its name and a digest."""


def limit_key(task: str, key: KeyFunction | None, payload: dict[str, Any]) -> str:
    """The key a limit counts under: the task's name, and ``key(payload)`` when given.

    Raises :class:`~worker.errors.PayloadInvalid` when the function cannot derive a key
    from this payload (a missing field): such a job could never be admitted.
    """
    if key is None:
        return task
    try:
        value = key(payload)
    except Exception as exc:
        raise PayloadInvalid(
            f"the limit key of {task!r} cannot be derived from the payload: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    full = f"{task}:{value}"
    if len(full) <= KEY_CHARS:
        return full
    return f"{task[:150]}:sha256:{hashlib.sha256(full.encode()).hexdigest()}"
