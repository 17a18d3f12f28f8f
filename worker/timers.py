"""Keep the worker's timer from growing with every job it has ever run.

For each job, Celery's prefork pool sets a time-limit timer in the worker's main process
(at the job's ``timeout_s``, 300 s by default) and cancels it when the job ends; kombu's
timer keeps a cancelled entry in its heap until its time would have come
(celery/celery#1427). At 400 jobs/s that is some 120,000 dead entries, about 60 MiB,
and the main process grew by 42 % between 10,000 and 100,000 jobs (docs/benchmarks.md).

:class:`CompactTimers` removes the cancelled entries every :data:`COMPACT_EVERY_S`, on
the timer's own thread (the event loop, or the timer thread of the thread pool), so no
one else touches the heap meanwhile. An entry is only ever cancelled by the one who
scheduled it, after which nothing refers to it: dropping it changes no schedule.
"""

from __future__ import annotations

import heapq
from typing import Any

from celery import bootsteps

COMPACT_EVERY_S = 30.0


def compact(timer: Any) -> int:
    """Drop the cancelled entries of a kombu ``Timer``'s heap; returns how many."""
    queue: list[Any] | None = getattr(timer, "_queue", None)
    if queue is None:
        return 0
    live = [event for event in queue if not event[2].canceled]
    dropped = len(queue) - len(live)
    if dropped:
        heapq.heapify(live)
        queue[:] = live  # the same list: the timer's iterator holds it
    return dropped


def _schedule(timer: Any) -> Any:
    """The kombu ``Timer`` behind the consumer's timer (the event loop's, or timer2's)."""
    return getattr(timer, "schedule", timer)


class CompactTimers(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer bootstep that runs :func:`compact` on the consumer's timer."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._entry: Any = None

    def start(self, parent: Any) -> None:
        schedule = _schedule(parent.timer)
        self._entry = parent.timer.call_repeatedly(COMPACT_EVERY_S, compact, (schedule,))

    def stop(self, parent: Any) -> None:
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None

    shutdown = stop
