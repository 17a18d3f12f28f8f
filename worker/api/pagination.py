"""Keyset pagination of jobs, newest first, with opaque cursors.

A page ends at a job; the cursor encodes that job's ``(created_at, id)`` and the next page
is every job strictly before it in that order (the ``ix_conveyor_jobs_created_id`` index
serves it). Unlike offsets, this neither repeats nor skips jobs when new ones arrive while
a client pages: new jobs are newer than any cursor, so they appear only on a fresh first
page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, cast, func, literal, select, tuple_
from sqlalchemy.dialects.postgresql import JSONB

from conveyor.worker.api.problems import ProblemError
from conveyor.worker.ledger import Ledger
from conveyor.worker.models import Job


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last job of a page: where the next page starts (exclusive)."""

    created_at: datetime
    job_id: str

    def encode(self) -> str:
        raw = json.dumps([self.created_at.isoformat(), self.job_id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Read a cursor this API gave out; raises a 400 problem for anything else."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            created, job_id = json.loads(raw)
            when = datetime.fromisoformat(created).astimezone(UTC)
            if not isinstance(job_id, str) or "\x00" in job_id:
                raise ValueError("not a cursor")
        except (ValueError, TypeError, OverflowError, binascii.Error):
            raise ProblemError(
                400,
                "the cursor is not one this API gave out; start again without it",
                kind="invalid-cursor",
                title="Invalid cursor",
            ) from None
        return cls(when, job_id)


@dataclass(frozen=True, slots=True)
class PayloadMatch:
    """A payload field equal to a JSON value: ``customer_id = 42`` or ``order.kind = "a"``."""

    path: tuple[str, ...]
    value: Any

    def condition(self, *, postgresql: bool) -> ColumnElement[bool]:
        """On PostgreSQL a JSONB containment (``payload @> '{"customer_id": 42}'``), which the
        GIN index on ``payload`` serves; on SQLite a ``json_extract`` comparison."""
        if postgresql:
            document: Any = self.value
            for name in reversed(self.path):
                document = {name: document}
            return Job.payload.op("@>")(cast(literal(json.dumps(document)), JSONB))
        extracted = func.json_extract(Job.payload, "$." + ".".join(f'"{p}"' for p in self.path))
        matches: ColumnElement[bool] = extracted == self.value
        return matches


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs a listing shows; every field that is set narrows it."""

    state: str | None = None
    task: str | None = None
    queue: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    idempotency_key: str | None = None
    payload: PayloadMatch | None = None

    def query(self, *, postgresql: bool = True) -> Select[Job]:
        query = select(Job).order_by(Job.created_at.desc(), Job.id.desc())
        if self.idempotency_key is not None:
            query = query.where(Job.idempotency_key == self.idempotency_key)
        if self.payload is not None:
            query = query.where(self.payload.condition(postgresql=postgresql))
        if self.state is not None:
            query = query.where(Job.state == self.state)
        if self.task is not None:
            query = query.where(Job.task == self.task)
        if self.queue is not None:
            query = query.where(Job.queue == self.queue)
        if self.created_after is not None:
            query = query.where(Job.created_at > self.created_after)
        if self.created_before is not None:
            query = query.where(Job.created_at < self.created_before)
        return query


def page(
    ledger: Ledger, where: JobFilter, *, cursor: Cursor | None, limit: int
) -> tuple[Sequence[Job], Cursor | None]:
    """Up to ``limit`` jobs after ``cursor``, and the cursor of the next page (None: last)."""
    query = where.query(postgresql=ledger.is_postgresql).limit(limit + 1)
    if cursor is not None:
        query = query.where(tuple_(Job.created_at, Job.id) < (cursor.created_at, cursor.job_id))
    with ledger.lagging_session() as session:
        rows = session.scalars(query).all()
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], Cursor(last.created_at, last.id)
