"""The API's rate limits, shared by every API process through the ledger.

**Per key and kind of route** (:class:`RateLimiter`): each key has one bucket for each
:class:`RouteKind` (enqueue, read, admin: the scope its route needs), so a producer's
burst of enqueues does not starve its reads, nor a dashboard's polling the enqueues. A
bucket earns its rate of tokens a second up to a burst of one second's worth, and each
request spends one; a request that finds it empty is refused (429) and told when the next
token arrives (``Retry-After``).

**Per client address, for failed authentication** (:class:`AuthFailures`): an address may
fail ``per_min`` times at once, then once every ``60 / per_min`` seconds; beyond that it is
refused (429) before its token or password is even checked. Valid keys that a process
has cached skip the check, so the guard costs nothing on the good path.

The buckets are rows of the ledger (:meth:`~worker.ledger.keys.KeyStore.take_token`, one
upsert): N API processes allow each rate once, not N times.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from conveyor.worker.api.keys import Scope
from conveyor.worker.ledger import Ledger


class RouteKind(StrEnum):
    """The kinds of route with a bucket of their own."""

    ENQUEUE = "enqueue"
    READ = "read"
    ADMIN = "admin"

    @classmethod
    def of(cls, scope: Scope) -> RouteKind:
        """The kind of a route that needs ``scope``: operate and admin share one bucket."""
        if scope is Scope.ENQUEUE:
            return cls.ENQUEUE
        return cls.READ if scope is Scope.READ else cls.ADMIN


@dataclass(frozen=True)
class Rates:
    """Requests per second allowed per key, by kind of route."""

    enqueue_per_s: float
    read_per_s: float
    admin_per_s: float

    def of(self, kind: RouteKind) -> float:
        return {
            RouteKind.ENQUEUE: self.enqueue_per_s,
            RouteKind.READ: self.read_per_s,
            RouteKind.ADMIN: self.admin_per_s,
        }[kind]


class RateLimiter:
    """:meth:`take` spends a token of a key's bucket for a kind of route, or says how long
    to wait. Blocking (one ledger round trip): call it off the event loop."""

    def __init__(
        self, ledger: Ledger, rates: Rates, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.ledger = ledger
        self.rates = rates
        self._clock = clock

    def take(self, key_id: str, kind: RouteKind) -> float:
        """0.0 if ``key_id`` may make a ``kind`` request now, else seconds until it may."""
        rate = self.rates.of(kind)
        return self.ledger.take_token(
            f"api:{kind}:{key_id}", interval_s=1.0 / rate, burst=max(1.0, rate), now=self._clock()
        )


class AuthFailures:
    """Failed authentications per client address (API keys and console sign-ins alike).

    :meth:`wait_s` says whether an address may try at all; :meth:`failed` spends one of its
    failures. Both are blocking (a ledger round trip): call them off the event loop.
    """

    def __init__(
        self, ledger: Ledger, *, per_min: int, clock: Callable[[], float] = time.time
    ) -> None:
        if per_min <= 0:
            raise ValueError("per_min must be > 0")
        self.ledger = ledger
        self.per_min = per_min
        self._interval_s = 60.0 / per_min
        self._clock = clock

    def wait_s(self, address: str) -> float:
        """0.0 if ``address`` may try to authenticate now, else seconds until it may."""
        return self.ledger.peek_token(
            _bucket(address), interval_s=self._interval_s, burst=self.per_min, now=self._clock()
        )

    def failed(self, address: str) -> None:
        """Count a failed attempt from ``address``."""
        self.ledger.take_token(
            _bucket(address), interval_s=self._interval_s, burst=self.per_min, now=self._clock()
        )


def _bucket(address: str) -> str:
    return f"auth-failures:{address[:200]}"


def retry_after_header(wait_s: float) -> str:
    """``Retry-After`` is whole seconds: round up, and never say 0."""
    return str(max(1, math.ceil(wait_s)))
