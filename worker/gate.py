"""The limits' part of an attempt: the gated claim's key, the rate slot, a ``RetryAfter``.

:class:`~worker.runtime.Runtime` calls a :class:`Gate` at three points of a job's path, and
only for a job that declares a limit (:mod:`worker.limits`): a job without one costs an
attribute check.

1. Before the claim, :meth:`Gate.concurrency_key` derives the key that the gated claim
   (:meth:`~worker.ledger.limits.LimitStore.claim_limited`) counts under; a job parked
   because its key is full ends with :meth:`Gate.parked`.
2. After the claim, :meth:`Gate.pace` waits for the job's rate slot, or sends the job back
   to the ledger to wait for it (:class:`~worker.errors.Deferred`), its attempt given back.
3. When an attempt raises :class:`~worker.errors.RetryAfter`, :meth:`Gate.slow_down` holds
   back the other jobs of its rate key.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from conveyor.worker.delivery import Delivery
from conveyor.worker.errors import Deferred, LeaseLost, PayloadInvalid, RetryAfter
from conveyor.worker.jobs import JobSpec
from conveyor.worker.ledger import Ledger
from conveyor.worker.limits import limit_key
from conveyor.worker.outcomes import Event, JobEvent, Outcomes

SLOT_WAIT_S = 1.0
"""A rate slot at most this far off is waited for in the worker (asleep, holding the job's
lease); a later one in the ledger."""
LEAD_S = 0.5
"""A job waiting in the ledger is published this long before its slot, and sleeps the
rest in the worker: so that it starts on its slot, not on the relay's next pass after it
(a start delayed into the next slot's window would exceed the rate there)."""


class Gate:
    """Rate and concurrency limits at the start of an attempt, for one runtime."""

    def __init__(self, ledger: Ledger, outcomes: Outcomes) -> None:
        self.ledger = ledger
        self.outcomes = outcomes

    @staticmethod
    def concurrency_key(
        spec: JobSpec, delivery: Delivery
    ) -> tuple[str | None, PayloadInvalid | None]:
        """The concurrency key to claim under (None: no limit), or the error that makes this
        payload unable to have one: the job is then claimed plainly and dead-lettered."""
        concurrency = spec.limits.concurrency
        if concurrency is None:
            return None, None
        try:
            return limit_key(spec.name, concurrency.key, delivery.payload), None
        except PayloadInvalid as exc:
            return None, exc

    def parked(self, spec: JobSpec, delivery: Delivery, claimed: dict[str, Any]) -> Deferred:
        """Record that the job waits for a free slot of its key; how the task ends."""
        self.outcomes.emit(
            JobEvent(
                Event.DEFERRED,
                delivery.job_id,
                spec.name,
                delivery.queue,
                limit="concurrency",
                **claimed,
            )
        )
        limit = spec.limits.concurrency.limit if spec.limits.concurrency else 0
        return Deferred(f"deferred: its concurrency key has {limit} running")

    def pace(
        self, spec: JobSpec, delivery: Delivery, attempt: int, reserved: datetime | None
    ) -> None:
        """Return when the job's rate slot has come; else send it back to wait for it.

        A job that waited already holds its slot (``reserved``); otherwise this reserves
        its key's next one. A wait up to :data:`SLOT_WAIT_S` is slept here; a longer one
        raises :class:`~worker.errors.Deferred` once the job waits in the ledger until
        :data:`LEAD_S` before its slot, its attempt given back
        (:class:`~worker.errors.LeaseLost` if it was no longer ours).
        """
        rate = spec.limits.rate
        if rate is None:
            return
        key = limit_key(spec.name, rate.key, delivery.payload)
        now = time.time()
        if reserved is not None:
            slot = reserved.timestamp()
        else:
            slot = self.ledger.reserve_rate_slot(key, interval_s=rate.interval_s, now=now)
        wait_s = slot - now
        if wait_s <= SLOT_WAIT_S:
            if wait_s > 0:
                time.sleep(wait_s)
            return
        until, slot_at = (datetime.fromtimestamp(at, UTC) for at in (slot - LEAD_S, slot))
        if not self.ledger.defer(delivery.job_id, attempt, key=key, slot=slot_at, until=until):
            raise LeaseLost(delivery.job_id)
        self.outcomes.emit(
            JobEvent(
                Event.DEFERRED,
                delivery.job_id,
                spec.name,
                delivery.queue,
                attempt,
                delay_s=wait_s,
                limit="rate",
            )
        )
        raise Deferred(f"deferred: the rate limit's next slot is in {wait_s:.1f}s")

    def slow_down(self, spec: JobSpec, delivery: Delivery, error: RetryAfter) -> None:
        """Start no other job of this rate key before ``error.delay_s`` from now, and with
        ``error``'s ``limit`` space them at that slower rate for ``error.for_s``."""
        rate = spec.limits.rate
        if rate is None:
            return
        key = limit_key(spec.name, rate.key, delivery.payload)
        now = time.time()
        slower = error.slow_interval_s
        self.ledger.slow_down(
            key,
            not_before=now + error.delay_s,
            interval_s=slower,
            until=None if slower is None else now + error.for_s,
        )
