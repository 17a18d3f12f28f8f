"""One relay at a time: the relay's duty goes to whichever process holds its lease.

Every worker runs the relay's duty by default (``CONVEYOR_RELAY_IN_WORKERS``), so a
deployment of workers alone recovers the jobs of killed workers and publishes due retries
and outbox rows. ``conveyor relay`` processes take part in the same election. Exactly one
of them acts at a time: the one holding the ledger's ``relay`` lease
(:mod:`worker.ledger.leases`), which it renews every :data:`LEADER_RENEW_S` seconds for
:data:`LEADER_LEASE_S`; the others try to take it as often.

The leader counts its tenure from *before* it asked for the lease, and acts only while
that tenure has not run out by its own clock: a leader cut off from the ledger stops
acting before the ledger lets another process take over. The relay's rows are locked
with ``SKIP LOCKED`` besides, so even two relays at once would not publish a row twice.
A leader that stops cleanly gives the lease up, and the next one takes it within a
renewal.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from time import monotonic
from typing import Any

from celery import bootsteps
from sqlalchemy.exc import SQLAlchemyError

from conveyor.worker.constants import LEADER_LEASE_S, LEADER_RENEW_S
from conveyor.worker.ledger import Ledger

log = logging.getLogger("conveyor.leader")

RELAY_LEASE = "relay"
MARGIN_S = 0.5
"""How much sooner than the ledger the leader stops counting itself leader."""


def holder_name(node: str | None = None) -> str:
    """A name no other process holds: the node (or host), the pid and a random suffix, so
    a restarted process is never taken for its predecessor."""
    return f"{node or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Leadership:
    """This process's claim on one lease."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        holder: str,
        name: str = RELAY_LEASE,
        lease_s: float = LEADER_LEASE_S,
        renew_s: float = LEADER_RENEW_S,
    ) -> None:
        self.ledger = ledger
        self.holder = holder
        self.name = name
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.term: int | None = None
        self.reachable = False
        """Whether the last attempt to take or renew the lease got an answer."""
        self._until = 0.0
        self._asked = float("-inf")

    @property
    def leads(self) -> bool:
        """Whether this process may act now: its tenure has not run out."""
        return monotonic() < self._until

    def hold(self) -> bool:
        """Take or renew the lease if a renewal is due; whether this process leads."""
        if monotonic() - self._asked < self.renew_s:
            return self.leads
        asked = self._asked = monotonic()
        try:
            term = self.ledger.take_lease(self.name, self.holder, ttl_s=self.lease_s)
            self.reachable = True
        except SQLAlchemyError:
            term, self.reachable = None, False
            if self.leads:
                log.warning("leader.renew_failed", extra={"lease": self.name}, exc_info=True)
        if term is not None:
            if term != self.term:
                log.info(
                    "leader.elected",
                    extra={"lease": self.name, "term": term, "holder": self.holder},
                )
            self.term = term
            self._until = asked + self.lease_s - MARGIN_S
        elif self.term is not None and not self.leads:
            log.info("leader.lost", extra={"lease": self.name, "term": self.term})
            self.term = None
        return self.leads

    def give_up(self) -> None:
        """Hand the lease over at once (a clean stop)."""
        was_leading = self.leads
        self._until = 0.0
        if not was_leading:
            return
        try:
            self.ledger.give_up_lease(self.name, self.holder)
        except SQLAlchemyError:
            log.warning("leader.give_up_failed", extra={"lease": self.name}, exc_info=True)
            return
        log.info("leader.stepped_down", extra={"lease": self.name, "term": self.term})
        self.term = None


class RelayStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """A worker bootstep: the relay's duty on a thread of the worker's main process, acting
    only while this worker leads (added in :func:`worker.app.create_app` when
    ``CONVEYOR_RELAY_IN_WORKERS`` is on).

    It starts once the pool is up, so the pool's processes are forked before the thread
    exists, and stops before the pool does, giving the lease up for the next leader.
    """

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._relay: Any = None
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        from conveyor.worker.relay import Relay

        app = parent.app
        leadership = Leadership(app.ledger, holder=holder_name(parent.hostname))
        self._relay = Relay(app, leadership=leadership)
        self._thread = threading.Thread(target=self._relay.run, name="conveyor-relay", daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:
        if self._relay is None:
            return
        self._relay.stop()
        if self._thread is not None:
            self._thread.join(10)
        self._relay = None

    shutdown = stop
