"""Dead-letter triage: list, show, replay and purge dead jobs, with an audit trail.

The ledger is the dead-letter store of record (:mod:`worker.ledger.dead`): a dead job
keeps its payload, queue, attempts, error type, message and traceback, and timestamps.
Each queue's broker-side dead-letter queue (``Q.dead``) mirrors it for queue-watching
tools; replay and purge remove the matching messages there too.

- **Replay** creates a new job per dead one — same task, queue, payload and idempotency
  key, attempts from zero, ``replay_of`` pointing at the dead job, whose ``replayed_as``
  points back — and hands it to the relay, spaced by the rate limit. Effects guarded by
  the key stay exactly-once: the key moves to the new job in the same transaction.
- **Purge** deletes dead jobs for good.

Both take rows with ``SKIP LOCKED`` (two operators never replay one job twice) and write
one :class:`~worker.models.AuditEntry` each: who, when, which filter, which jobs.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.worker.app import ConveyorApp
from conveyor.worker.deadletter import (
    JOB_ID_HEADER,
    dead_letter_destination,
    dead_letters_quorum,
)
from conveyor.worker.jobs import REGISTRY
from conveyor.worker.ledger.dead import DeadFilter, error_type_matches
from conveyor.worker.models import AuditEntry, Job
from conveyor.worker.operations.views import iso
from conveyor.worker.outcomes import Event, JobEvent

__all__ = ["DeadFilter", "Outcome", "error_type_matches"]

log = logging.getLogger("conveyor.dlq")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a replay or purge did (or, with ``dry_run``, would do)."""

    action: str
    dry_run: bool
    job_ids: list[str]
    new_ids: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    removed_from_broker: int = 0
    audit_id: int | None = None
    """The action's audit entry (a replay's: its page follows the new jobs)."""

    @property
    def count(self) -> int:
        return len(self.job_ids)


def dead_letter_view(job: Job, *, traceback: bool = False) -> dict[str, Any]:
    """One dead letter as JSON (the shape of ``conveyor dlq list --json``)."""
    view = {
        "id": job.id,
        "task": job.task,
        "queue": job.queue,
        "reason": job.dead_reason,
        "error_type": job.error_type,
        "error_message": job.error_message,
        "attempts": job.attempts,
        "dead_at": iso(job.finished_at),
        "created_at": iso(job.created_at),
        "idempotency_key": job.idempotency_key,
        "replay_of": job.replay_of,
        "payload": job.payload,
    }
    if traceback:
        view["traceback"] = job.error_traceback
    return view


def list_dead(
    app: ConveyorApp, where: DeadFilter, *, limit: int = 100, lagging: bool = False
) -> Sequence[Job]:
    """The matching dead jobs (``lagging``: on the read replica, if any; for lists)."""
    return app.ledger.dead(where, limit=limit, lagging=lagging)


def replay(
    app: ConveyorApp,
    where: DeadFilter,
    *,
    actor: str,
    dry_run: bool = False,
    rate_per_s: float | None = None,
    limit: int = 10_000,
) -> Outcome:
    """Put dead jobs back on their original queues as new jobs (see the module docstring)."""
    if dry_run:
        jobs = list_dead(app, where, limit=limit)
        return Outcome("replay", True, [job.id for job in jobs])

    def max_attempts(task: str) -> int | None:
        spec = REGISTRY.get(task)
        return spec.policy.max_attempts if spec is not None else None

    done = app.ledger.replay(
        where, actor=actor, max_attempts=max_attempts, rate_per_s=rate_per_s, limit=limit
    )
    queues: dict[str, set[str]] = defaultdict(set)
    for old_id, (task, queue) in done.rows.items():
        queues[queue].add(old_id)
        app.outcomes.emit(JobEvent(Event.REPLAYED, done.new_ids[old_id], task, queue))
    removed = sum(remove_dead_letters(app, queue, ids) for queue, ids in queues.items())
    log.info(
        "dlq.replayed",
        extra={"count": len(done.new_ids), "actor": actor, "skipped": len(done.skipped)},
    )
    new_ids = list(done.new_ids.values())
    return Outcome(
        "replay", False, list(done.new_ids), new_ids, done.skipped, removed, done.audit_id
    )


def purge(
    app: ConveyorApp, where: DeadFilter, *, actor: str, dry_run: bool = False, limit: int = 100_000
) -> Outcome:
    """Delete dead jobs (and their attempts) from the ledger and the broker for good."""
    if dry_run:
        return Outcome("purge", True, [job.id for job in list_dead(app, where, limit=limit)])
    purged = app.ledger.purge(where, actor=actor, limit=limit)
    queues: dict[str, set[str]] = defaultdict(set)
    for job_id, queue in purged.items():
        queues[queue].add(job_id)
    removed = sum(remove_dead_letters(app, queue, ids) for queue, ids in queues.items())
    log.info("dlq.purged", extra={"count": len(purged), "actor": actor})
    return Outcome("purge", False, list(purged), removed_from_broker=removed)


def audit_log(app: ConveyorApp, *, limit: int = 50) -> Sequence[AuditEntry]:
    return app.ledger.audit_log(limit=limit)


def remove_dead_letters(app: ConveyorApp, queue: str, job_ids: set[str]) -> int:
    """Remove the messages of ``job_ids`` from ``queue``'s broker-side dead-letter queue.

    Every message is taken once without acknowledgement; matching ones are acknowledged
    (removed), the rest are requeued after the pass, so none is read twice or lost. Best
    effort: the ledger change is already committed, so a broker that cannot be reached
    only leaves stale copies on ``Q.dead`` (logged), never a failed replay or purge.
    """
    try:
        return _remove_dead_letters(app, queue, job_ids)
    except Exception:
        log.exception("dlq.broker_cleanup_failed", extra={"queue": queue, "jobs": len(job_ids)})
        return 0


def _remove_dead_letters(app: ConveyorApp, queue: str, job_ids: set[str]) -> int:
    removed = 0
    kept = []
    with app.connection_for_write() as connection:
        destination = dead_letter_destination(queue, quorum=dead_letters_quorum(app, queue))
        bound = destination.bind(connection.default_channel)
        bound.declare()
        while (message := bound.get(no_ack=False)) is not None:
            if (message.headers or {}).get(JOB_ID_HEADER) in job_ids:
                message.ack()
                removed += 1
            else:
                kept.append(message)
        for message in kept:
            message.requeue()
    return removed
