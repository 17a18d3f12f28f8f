"""The statements on every job's path, built once: the claim, the success, progress.

Constructing SQLAlchemy statements per call cost more CPU than the database round trips
they make. On PostgreSQL they run straight through psycopg (:meth:`Database.direct`) as
SQL compiled once by :func:`_direct_sql`; SQLite runs the same statements through
SQLAlchemy. :mod:`worker.ledger.jobs` runs them.
"""

from __future__ import annotations

from functools import cache
from typing import Any, cast

from sqlalchemy import Table, bindparam, or_, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.dml import UpdateBase

from conveyor.worker.models import Job, JobState, JSONDocument, UTCDateTime

CLAIMABLE = (JobState.QUEUED, JobState.SCHEDULED)
EXPIRED = "expired"
"""``cancel_reason`` of a job whose deadline (``expires_at``) passed before it started."""

_jobs = cast(Table, Job.__table__)
_now = bindparam("b_now", type_=UTCDateTime())
CLAIMABLE_NOW = (
    # Equalities, not IN: an IN list is rendered per execution (_direct_sql compiles once).
    # A job past its deadline that never started is not claimed: the fallback in
    # JobPath.claim cancels it (the success path pays only these conditions on one row).
    (
        or_(*(_jobs.c.state == state.value for state in CLAIMABLE))
        & (
            _jobs.c.expires_at.is_(None)
            | (_jobs.c.expires_at > _now)
            | _jobs.c.started_at.is_not(None)
        )
    )
    | ((_jobs.c.state == JobState.RUNNING.value) & (_jobs.c.lease_expires_at < _now))
)
"""Whether a job may be claimed at ``b_now``: waiting and within its deadline, or running
on a lease that expired."""
CLAIM_VALUES: dict[str, Any] = {
    "state": JobState.RUNNING.value,
    "attempts": _jobs.c.attempts + 1,
    "started_at": _now,
    "updated_at": _now,
    "lease_expires_at": bindparam("b_lease", type_=UTCDateTime()),
    "worker": bindparam("b_worker"),
}
CLAIMED = (_jobs.c.attempts, _jobs.c.idempotency_key, _jobs.c.rate_slot_at)
"""What a claim returns: the attempt's number, the idempotency key, the reserved rate slot."""
CLAIM = (
    update(_jobs)
    .where(_jobs.c.id == bindparam("b_id"), CLAIMABLE_NOW)
    .values(CLAIM_VALUES)
    .returning(*CLAIMED)
)
_THIS_ATTEMPT = (
    _jobs.c.id == bindparam("b_id"),
    _jobs.c.state == JobState.RUNNING.value,
    _jobs.c.attempts == bindparam("b_attempt"),
)
"""Fences a write to the attempt that holds the job: a worker whose lease was taken over
writes nothing."""
SUCCEED = (
    update(_jobs)
    .where(*_THIS_ATTEMPT)
    .values(
        state=JobState.SUCCEEDED.value,
        result=bindparam("b_result", type_=JSONDocument),
        finished_at=_now,
        updated_at=_now,
        lease_expires_at=None,
        error_type=None,
        error_message=None,
        error_traceback=None,
    )
    .returning(_jobs.c.id)
)
PROGRESS = (
    update(_jobs)
    .where(*_THIS_ATTEMPT)
    .values(
        progress_done=bindparam("b_done"),
        progress_total=bindparam("b_total"),
        progress_note=bindparam("b_note"),
        progress_at=_now,
    )
    .returning(_jobs.c.id)
)
PROGRESS_NOTE_CHARS = 200
"""``progress_note``'s length: longer notes are cut to it."""


@cache
def _direct_sql(statement: UpdateBase) -> tuple[str, dict[str, Any]]:
    """``statement`` as PostgreSQL SQL for psycopg, with the values of its constant
    parameters (the states); the caller adds the ``b_*`` ones."""
    dialect = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
    compiled = statement.compile(dialect=dialect)
    constants = {k: v for k, v in compiled.params.items() if not k.startswith("b_")}
    return str(compiled), constants
