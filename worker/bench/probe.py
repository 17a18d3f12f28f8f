"""The body every benchmark job runs, whatever system runs it: wait, then count itself.

A job's payload carries what the harness needs: ``k`` (the Redis key of this phase), ``n``
(how many jobs the phase holds), ``s`` (seconds to wait, the "I/O" of the job) and, in the
latency phase, ``t`` (when the producer sent it, ``time.time()``). Each job makes one
round trip to Redis (a pipeline): it counts itself and, with ``t``, records how long it
waited between being sent and starting. The first and the last job of a phase also record
when they ran, which gives the drain rate without polling.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis

COUNTER_URL_ENV = "BENCH_COUNTER_URL"
DEFAULT_COUNTER_URL = "redis://127.0.0.1:6379/13"


_local = threading.local()


def _counter() -> redis.Redis:
    """This thread's own client (Dramatiq runs jobs on several threads of a process)."""
    client: redis.Redis | None = getattr(_local, "client", None)
    if client is None:
        url = os.environ.get(COUNTER_URL_ENV, DEFAULT_COUNTER_URL)
        client = _local.client = redis.Redis.from_url(url, single_connection_client=True)
    return client


def record(payload: dict[str, Any]) -> None:
    """Run one benchmark job described by ``payload`` (see the module's docstring)."""
    started = time.time()
    sleep_s = float(payload.get("s") or 0)
    if sleep_s:
        time.sleep(sleep_s)
    key = str(payload["k"])
    pipe = _counter().pipeline(transaction=False)
    pipe.incr(f"{key}:count")
    if "t" in payload:
        pipe.rpush(f"{key}:wait", started - float(payload["t"]))
    done = int(pipe.execute()[0])
    if done == 1:
        _counter().set(f"{key}:first", repr(started))
    if done >= int(payload["n"]):
        _counter().set(f"{key}:last", repr(time.time()))
