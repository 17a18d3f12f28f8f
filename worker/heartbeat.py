"""Lease renewal for the jobs running in this process.

A claim lasts ``CONVEYOR_JOB_LEASE_S`` (default :data:`~worker.constants.LEASE_S`). While a
job runs, a daemon thread renews its lease every :func:`beat_every_s` of it (3 s of the
default 10 s), so a long job keeps its claim and a job whose process died loses it within
seconds; the relay then puts it back on its queue. Celery's prefork pool forks its children
after start-up, so the thread is started lazily in whichever process first runs a job, and
again after a fork.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from conveyor.worker.constants import HEARTBEAT_EVERY_S, LEASE_S
from conveyor.worker.ledger import Ledger

log = logging.getLogger("conveyor.heartbeat")


def beat_every_s(lease_s: float) -> float:
    """How often to renew a lease of ``lease_s``: the default's share of it
    (:data:`~worker.constants.HEARTBEAT_EVERY_S` of :data:`~worker.constants.LEASE_S`), so
    that a lease outlives two missed beats whatever its length."""
    return lease_s * HEARTBEAT_EVERY_S / LEASE_S


class Heartbeat:
    """Keeps the leases of this process's running jobs alive."""

    def __init__(self, ledger: Ledger, *, lease_s: float) -> None:
        self._ledger = ledger
        self.lease_s = lease_s
        self.every_s = beat_every_s(lease_s)
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()
        self._pid: int | None = None

    @contextmanager
    def hold(self, job_id: str, attempt: int) -> Iterator[None]:
        """Renew the lease of ``job_id`` (claimed as ``attempt``) for as long as this block runs."""
        self._ensure_thread()
        with self._lock:
            self._running[job_id] = attempt
        try:
            yield
        finally:
            with self._lock:
                self._running.pop(job_id, None)

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._running = {}  # a forked child inherits its parent's dict, not its jobs
            self._pid = os.getpid()
            threading.Thread(target=self._loop, name="conveyor-heartbeat", daemon=True).start()

    def _loop(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            threading.Event().wait(self.every_s)
            with self._lock:
                running = dict(self._running)
            if not running:
                continue
            try:
                self._ledger.renew(running, lease_s=self.lease_s)
            except Exception:  # the ledger is down: the next beat tries again
                log.warning("heartbeat.failed", extra={"jobs": len(running)}, exc_info=True)
