"""Lease renewal for the jobs running in this process.

A claim lasts :data:`~worker.constants.LEASE_S`. While a job runs, a daemon thread renews
its lease every :data:`~worker.constants.HEARTBEAT_EVERY_S`, so a long job keeps its claim
and a job whose process died loses it within seconds; the relay then puts it back on its
queue. Celery's prefork pool forks its children after start-up, so the thread is started
lazily in whichever process first runs a job, and again after a fork.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from conveyor.worker.ledger import Ledger

log = logging.getLogger("conveyor.heartbeat")


class Heartbeat:
    """Keeps the leases of this process's running jobs alive."""

    def __init__(self, ledger: Ledger, *, lease_s: float, every_s: float) -> None:
        self._ledger = ledger
        self._lease_s = lease_s
        self._every_s = every_s
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
            threading.Event().wait(self._every_s)
            with self._lock:
                running = dict(self._running)
            if not running:
                continue
            try:
                self._ledger.renew(running, lease_s=self._lease_s)
            except Exception:  # the ledger is down: the next beat tries again
                log.warning("heartbeat.failed", extra={"jobs": len(running)}, exc_info=True)
