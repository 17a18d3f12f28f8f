"""Revoked keys stop at once in every API process: a listener on the ledger's channel.

:meth:`~worker.ledger.keys.KeyStore.revoke_key` announces each revocation with PostgreSQL's
``NOTIFY`` on :data:`~worker.ledger.keys.REVOKED_CHANNEL` when its transaction commits.
Each API process keeps one connection that ``LISTEN``\\ s there (a daemon thread) and drops
every cached key when a notification arrives, so the next request with the revoked key is
looked up and refused: the time a revocation takes is the notification's, milliseconds.

While the listener is not connected (starting, the ledger down, a switchover) the cache is
not trusted at all: every request looks its key up, so a revocation never waits on a
reconnect. A ledger that is not PostgreSQL has no listener, and no cache.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Final

import psycopg

from conveyor.worker.ledger import Ledger
from conveyor.worker.ledger.keys import REVOKED_CHANNEL

log = logging.getLogger("conveyor.api")

RECONNECT_S: Final = 1.0
"""Pause between attempts to connect the listener again."""
POLL_S: Final = 1.0
"""How long one wait for notifications lasts before the listener checks it should stop."""


class RevocationListener:
    """Calls ``forget`` for every revocation any process makes, and whenever it may have
    missed one (it connected again); :attr:`listening` says whether it is connected now."""

    def __init__(self, ledger: Ledger, forget: Callable[[], None]) -> None:
        self.ledger = ledger
        self.forget = forget
        self._listening = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    def start(self) -> None:
        if self.ledger.is_postgresql and self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="conveyor-key-revocations", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=POLL_S + 1.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(**self.ledger.psycopg_arguments(), autocommit=True) as conn:
                    conn.execute(f"LISTEN {REVOKED_CHANNEL}")
                    self.forget()  # anything revoked while it was not listening
                    self._listening.set()
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=POLL_S):
                            self.forget()
            except psycopg.Error as exc:
                if self._listening.is_set():
                    log.warning("api.revocations_unheard", extra={"error": str(exc)})
            finally:
                self._listening.clear()
            self._stopping.wait(RECONNECT_S)
