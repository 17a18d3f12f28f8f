"""A worker's shutdown on SIGTERM, bounded: finish what runs, hand back the rest, exit.

Celery's warm shutdown (SIGTERM) already does the first two: the consumer stops taking
messages, the jobs in flight run to their end, and closing the broker connection hands
back every message this worker had prefetched but not started (RabbitMQ requeues a
closed channel's unacknowledged messages; kombu's Redis channel pushes them back onto
their lists as it closes), so another worker starts them at once rather than after a
visibility timeout. What it lacks is a bound: it waits for the longest job however long,
and ignores a second SIGTERM. :func:`bound_warm_shutdown` adds both: after
``CONVEYOR_SHUTDOWN_TIMEOUT_S``, or at a second SIGTERM, the worker turns to Celery's
cold shutdown (SIGQUIT): the jobs still running are stopped, their messages go back
unacknowledged, and their ledger leases (renewed no more) let the next claim take them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from celery import platforms
from celery.signals import worker_shutting_down

log = logging.getLogger("conveyor.shutdown")

STOPPED_HARD = threading.Event()
"""Set once the shutdown turned cold: ``conveyor worker`` then exits with status 1 (jobs
were stopped unfinished), where Celery would report 0."""


def bound_warm_shutdown(timeout_s: float) -> None:
    """From the first SIGTERM on, end the worker hard after ``timeout_s`` or a second
    SIGTERM. Call in the worker's main process before Celery starts."""

    def on_shutting_down(sig: Any = None, how: Any = None, **_: Any) -> None:
        if how != "Warm":
            return
        log.info("worker.shutdown_started", extra={"timeout_s": timeout_s})
        timer = threading.Timer(timeout_s, go_cold, args=(f"still running after {timeout_s:g} s",))
        timer.daemon = True
        timer.start()
        platforms.signals["SIGTERM"] = lambda *_: go_cold("a second SIGTERM")

    worker_shutting_down.connect(on_shutting_down, weak=False)


def go_cold(why: str) -> None:
    """Turn the warm shutdown into Celery's cold one (its SIGQUIT handler)."""
    log.warning("worker.shutdown_hard", extra={"why": why})
    STOPPED_HARD.set()
    os.kill(os.getpid(), signal.SIGQUIT)
