"""Per-key rate limiting: one token bucket per API key, in this process.

Each key earns ``rate_per_s`` tokens a second up to a burst of one second's worth, and each
request spends one. A request that finds the bucket empty is refused (429) and told when
the next token arrives (``Retry-After``). Buckets live in the process's memory: N API
processes allow N times the rate, which is the documented behaviour.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Token buckets by key; :meth:`take` spends a token or says how long to wait."""

    def __init__(self, rate_per_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        self.rate_per_s = rate_per_s
        self.burst = max(1.0, rate_per_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, as of)

    def take(self, key: str) -> float:
        """Spend one of ``key``'s tokens: 0.0 if allowed, else seconds until one is due."""
        with self._lock:
            now = self._clock()
            tokens, as_of = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - as_of) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate_per_s


def retry_after_header(wait_s: float) -> str:
    """``Retry-After`` is whole seconds: round up, and never say 0."""
    return str(max(1, math.ceil(wait_s)))
