"""The plain Celery side of the throughput benchmark.

``celery -A ops.bench.plain_app worker ...`` runs :data:`app`: Celery's default settings
except a JSON serializer (already Celery's default) and ``task_ignore_result=True``, and
one task, ``bench.noop``. So that the benchmark can tell when every job has run, the task
does one Redis ``INCR`` (one round trip to Redis db 13, a little work Conveyor's job does
not do) and records the wall-clock time of the first and of the last job.

Environment (set by ``ops/bench/throughput.py``):

- ``BENCH_BROKER_URL``: the broker (default ``redis://127.0.0.1:6379/13``);
- ``BENCH_COUNTER_URL``: the Redis holding the counter (default the same db 13);
- ``BENCH_COUNTER_KEY``: the counter's key prefix;
- ``BENCH_TOTAL``: how many jobs make a full run (the last one records its time);
- ``BENCH_CONVEYOR_OPTIONS=1``: apply Conveyor's Celery options (acks late, prefetch 1,
  task events, publisher confirms, ...) without its ledger, to attribute the difference
  between the two sides (``throughput.py --attribution``).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

DEFAULT_BROKER = "redis://127.0.0.1:6379/13"


def make_app(broker_url: str, *, conveyor_options: bool = False) -> Celery:
    """A Celery app on ``broker_url`` with default settings (JSON, results ignored)."""
    celery = Celery("bench_plain", broker=broker_url, set_as_current=False)
    celery.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
    )
    if conveyor_options:
        from conveyor.config import celery_config, load_settings

        options = celery_config(load_settings(broker_url=broker_url))
        options.pop("worker_consumer")  # needs Conveyor's ledger; poison handling is off
        celery.conf.update(options)
    return celery


app = make_app(
    os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER),
    conveyor_options=os.environ.get("BENCH_CONVEYOR_OPTIONS") == "1",
)
_counter = redis.Redis.from_url(os.environ.get("BENCH_COUNTER_URL", DEFAULT_BROKER))
_key = os.environ.get("BENCH_COUNTER_KEY", "bench:plain")
_total = int(os.environ.get("BENCH_TOTAL", "0"))


@app.task(name="bench.noop")
def noop(**_payload: object) -> None:
    """Count this job; the first and the last one also record when they ran."""
    done = int(_counter.incr(f"{_key}:count"))
    if done == 1:
        _counter.set(f"{_key}:first", repr(time.time()))
    if done == _total:
        _counter.set(f"{_key}:last", repr(time.time()))
