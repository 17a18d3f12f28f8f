"""Paused queues, as a worker sees them: stop consuming a queue while the ledger says it is
paused, and start again once it is resumed.

The ledger holds the pauses (:mod:`worker.ledger.pauses`); every worker polls it about once
a second (:data:`~worker.constants.PAUSE_POLL_S`) on a thread of its own, so a ledger that
is slow to answer never stalls the consumer's event loop. On the loop, :class:`PauseStep`
then cancels the consumer of each paused queue this worker consumes and adds it back on
resume. A worker that starts while a queue is paused reads the pauses before it consumes.

Messages that were already on their way to this worker when the pause took effect (at
most its prefetch count) are not started: :func:`holding_paused` puts them back on their
queue (**rejected with requeue**), for whichever worker consumes it after the resume.
Jobs already running finish. If the ledger cannot be read, the worker keeps the pauses it
knew: a blip of the database neither pauses nor resumes anything.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from sqlalchemy.exc import SQLAlchemyError

from conveyor.worker.constants import PAUSE_POLL_S

log = logging.getLogger("conveyor.pauses")


class Pauses:
    """The latest paused-queue names read from the ledger, refreshed on a daemon thread."""

    def __init__(self, read: Callable[[], frozenset[str]], *, every_s: float) -> None:
        self._read = read
        self._every_s = every_s
        self.names: frozenset[str] = frozenset()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def refresh(self) -> None:
        """Read the pauses now; on a ledger error keep what was known."""
        try:
            self.names = self._read()
        except SQLAlchemyError:
            if not self._failing:
                log.warning("pauses.read_failed", exc_info=True)
            self._failing = True
            return
        self._failing = False

    def start(self) -> None:
        """Poll on a thread (one at most: a consumer that restarts after a lost connection
        starts this again, maybe before the old thread has seen the stop)."""
        self._stop.clear()
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="conveyor-pauses", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self.refresh()


class PauseStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer bootstep: consume no paused queue (added in :func:`worker.app.create_app`).

    It starts after Celery's ``Tasks`` step has set up the task consumer and before the
    event loop runs, so a paused queue's consumer is cancelled before its first message is
    handled. ``consumer.held_queues`` holds the queues it cancelled (liveness counts a
    worker whose every queue is paused as consuming).
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        parent.held_queues = set()
        self.pauses = Pauses(parent.app.ledger.paused_queues, every_s=PAUSE_POLL_S)
        parent.paused = self.pauses
        parent.apply_pauses = lambda: self.apply(parent)
        self._entry: Any = None

    def start(self, parent: Any) -> None:
        self.pauses.refresh()
        self.apply(parent)
        self.pauses.start()
        self._entry = parent.timer.call_repeatedly(PAUSE_POLL_S, self.apply, (parent,))

    def stop(self, parent: Any) -> None:
        self.pauses.stop()
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None

    shutdown = stop

    def apply(self, consumer: Any) -> None:
        """Cancel the consumers of newly paused queues; add back the resumed ones."""
        tasks = consumer.task_consumer
        if tasks is None:
            return
        paused = self.pauses.names
        held: set[str] = consumer.held_queues
        for queue in sorted({q.name for q in tasks.queues} & paused):
            consumer.cancel_task_queue(queue)
            held.add(queue)
            log.info("queue.paused", extra={"queue": queue})
        for queue in sorted(held - paused):
            consumer.add_task_queue(queue)
            held.discard(queue)
            log.info("queue.resumed", extra={"queue": queue})


def holding_paused(consumer: Any, handle: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap the consumer's message handler: a message of a paused queue is not started but
    **rejected with requeue**, so it waits on its queue for the resume (RabbitMQ puts it
    back at its place; Redis pushes it back onto its list)."""
    pauses: Pauses | None = getattr(consumer, "paused", None)
    if pauses is None:
        return handle
    errors = consumer.connection_errors
    apply_pauses = consumer.apply_pauses

    def on_message(message: Any) -> Any:
        paused = pauses.names
        if paused and (message.delivery_info or {}).get("routing_key") in paused:
            # Cancel the queue's consumer now, not at the next tick: RabbitMQ would hand
            # the requeued message straight back to a consumer that still consumes.
            apply_pauses()
            message.reject_log_error(log, errors, requeue=True)
            return None
        return handle(message)

    return on_message
