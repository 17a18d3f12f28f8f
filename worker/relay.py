"""The relay: the process that moves work from the ledger to the broker.

Each pass it

- publishes **due retries and delayed jobs** (state ``scheduled``, ``run_at`` passed), so a
  delay waits in the ledger, never as an unacknowledged message in a worker's memory;
- **releases parked jobs** of concurrency-limited keys as their slots free up
  (:meth:`~worker.ledger.Ledger.release_parked`), for the step above to publish;
- **recovers expired leases**: a ``running`` job whose worker stopped renewing its lease
  (killed, frozen, cut off) is put back on its queue, counting the lost attempt;
- **republishes stranded jobs**: ``queued`` jobs older than :data:`STRANDED_AFTER_S` whose
  queue on the broker is empty lost their message (see
  :meth:`~worker.ledger.Ledger.republish_stranded`); checked every few seconds;
- **enqueues periodic jobs** whose tick has come, one job per tick (:mod:`worker.scheduler`);
- **prunes finished jobs** past their retention (``CONVEYOR_RETENTION_*``,
  :mod:`worker.ledger.retention`) every ``CONVEYOR_RETENTION_EVERY_S``, a few short
  batches a pass, and on the next pass again while a backlog remains; and, as often, the
  idle rows of the rate limits (the API's buckets, failing addresses, rate keys).

Every worker runs the relay's duty too (``CONVEYOR_RELAY_IN_WORKERS``, on by default), and
``conveyor relay`` runs it on its own; among all of them one leader acts at a time
(:mod:`worker.leader`). Rows are taken with ``SELECT … FOR UPDATE SKIP LOCKED`` besides,
so a relay without a leadership (tests, a one-off pass) is safe beside the leader.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from conveyor.worker.app import ConveyorApp
from conveyor.worker.constants import RELAY_BATCH, RELAY_POLL_S
from conveyor.worker.leader import Leadership
from conveyor.worker.ledger.retention import Pruned, RetentionPolicy, prune
from conveyor.worker.models import Job
from conveyor.worker.observability.metrics import JOBS_PRUNED
from conveyor.worker.observability.probes import Liveness
from conveyor.worker.operations.broker import depths
from conveyor.worker.outcomes import Event, JobEvent
from conveyor.worker.publish import publish_row
from conveyor.worker.scheduler import Scheduler

log = logging.getLogger("conveyor.relay")


def broker_depth(app: ConveyorApp, queue: str) -> int:
    """Messages ready in ``queue`` on the broker (reserved, unacknowledged ones excluded);
    0 when there is no such queue."""
    found = depths(app, [queue])
    return found[0].messages if found else 0


STRANDED_AFTER_S = 30.0
STRANDED_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class Pass:
    """What one relay pass did."""

    released: int
    recovered: int
    republished: int = 0
    pruned: int = 0
    scheduled: int = 0
    """Jobs of periodic jobs' ticks written (:mod:`worker.scheduler`)."""


class Relay:
    """Polls the ledger and publishes what is due. Stop it with :meth:`stop` or SIGTERM.

    With a ``leadership``, :meth:`run` acts only while this process leads and gives the
    lease up when it stops.
    """

    def __init__(
        self,
        app: ConveyorApp,
        *,
        poll_s: float = RELAY_POLL_S,
        batch: int = RELAY_BATCH,
        alive_file: Path | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.app = app
        self.leadership = leadership
        self.poll_s = poll_s
        self.batch = batch
        self.alive_file = alive_file
        self._stopping = threading.Event()
        self._stranded_checked = 0.0
        settings = app.settings
        self.retention = RetentionPolicy(
            finished_s=settings.retention_succeeded_s, dead_s=settings.retention_dead_s
        )
        self.retention_every_s = settings.retention_every_s
        self._prune_due = time.monotonic()
        self.scheduler = Scheduler(app)
        self.liveness = Liveness()
        """Live while passes succeed (``/healthz`` of ``--metrics-port``)."""

    def run_once(self) -> Pass:
        scheduled = self.scheduler.run_due()  # before release_due, which publishes them
        self.app.ledger.release_parked()  # makes them due, for release_due to publish
        released = self.app.ledger.release_due(self.publish, limit=self.batch)
        recovered = self.app.ledger.recover_expired(self.publish, limit=self.batch)
        republished = 0
        if time.monotonic() - self._stranded_checked >= STRANDED_EVERY_S:
            republished = self.republish_stranded()
            self._stranded_checked = time.monotonic()
        pruned = self.prune_if_due()
        if released or recovered or republished or scheduled:
            log.info(
                "relay.pass",
                extra={
                    "released": released,
                    "recovered": recovered,
                    "republished": republished,
                    "scheduled": scheduled,
                },
            )
        return Pass(released, recovered, republished, pruned, scheduled)

    def prune_if_due(self) -> int:
        """Delete finished jobs past their retention, if a pass is due; how many went.

        Due every ``retention_every_s``, and at once again after a pass that stopped with
        rows left (a backlog). A failed pass is logged and tried again when the next is
        due: it must not hold up the relay's own duties, which run before it regardless.
        """
        if time.monotonic() < self._prune_due:
            return 0
        self._prune_due = time.monotonic() + self.retention_every_s
        try:
            self.app.ledger.forget_idle_buckets(now=time.time())  # rate limits' idle rows
            if not self.retention.enabled:
                return 0
            done = prune(self.app.ledger, self.retention)
        except Exception:  # the ledger refused or is unreachable: the next pass tries again
            log.warning("relay.prune_failed", exc_info=True)
            return 0
        if done.more:
            self._prune_due = time.monotonic()
        if done.total:
            self._record(done)
        return done.total

    @staticmethod
    def _record(done: Pruned) -> None:
        for state, count in done.by_state.items():
            JOBS_PRUNED.labels(state).inc(count)
        log.info(
            "relay.pruned",
            extra={"pruned": done.total, **dict(done.by_state), "batches": done.batches},
        )

    def republish_stranded(self) -> int:
        """Publish again the stale queued jobs of every queue that is empty on the broker."""
        count = 0
        for queue in self.app.ledger.stranded_queues(stale_s=STRANDED_AFTER_S):
            if broker_depth(self.app, queue) == 0:
                count += self.app.ledger.republish_stranded(
                    queue, self.publish, stale_s=STRANDED_AFTER_S, limit=self.batch
                )
        return count

    def publish(self, job: Job) -> None:
        publish_row(self.app, job)
        self.app.outcomes.emit(JobEvent(Event.PUBLISHED, job.id, job.task, job.queue))

    def run(self) -> None:
        """Pass after pass until stopped; a failed pass (ledger or broker down) is retried."""
        log.info("relay.started", extra={"poll_s": self.poll_s, "batch": self.batch})
        leadership = self.leadership
        while not self._stopping.is_set():
            if leadership is not None and not leadership.hold():
                if leadership.reachable:  # a follower that can reach the ledger is live
                    self._beat()
                self._stopping.wait(leadership.renew_s)
                continue
            try:
                done = self.run_once()
            except Exception:
                log.warning("relay.pass_failed", exc_info=True)
                self._stopping.wait(max(self.poll_s, 1.0))
                continue
            self._beat()
            if done.released < self.batch and done.recovered < self.batch:
                self._stopping.wait(self.poll_s)
        if leadership is not None:
            leadership.give_up()
        log.info("relay.stopped")

    def _beat(self) -> None:
        self.liveness.beat()
        if self.alive_file is not None:
            self.alive_file.touch()  # liveness probes check this file's age

    def stop(self) -> None:
        self._stopping.set()

    def stop_on_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())
