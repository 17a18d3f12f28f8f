"""Indexes for the console's filters, and partial indexes that keep the job path's writes cheap.

Chosen by ``EXPLAIN (ANALYZE, BUFFERS)`` on a ledger of ten million jobs
(``ops/bench/ledger_scale.py``; plans and figures in ``docs/console.md``).

Every job is written three times (created, claimed, succeeded) and none of those updates
is HOT (``state`` is indexed), so each full index on ``conveyor_jobs`` takes three entries
per job. A partial index takes entries only from the rows its predicate matches: the
relay's indexes now hold only ``scheduled`` or ``running`` rows, the dead letters' only
dead ones, ``finished_at``'s only finished ones. That pays for the console's three new full
indexes (state, queue, payload), so the job path writes about as many index entries per
job as before.

On PostgreSQL the indexes are built and dropped ``CONCURRENTLY`` (outside the migration's
transaction), so migrating a large ledger does not block the job path; new indexes exist
before the old ones they replace go. A build that fails leaves an ``INVALID`` index behind:
drop it (``DROP INDEX CONCURRENTLY name``) and run ``conveyor migrate`` again.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOBS = "conveyor_jobs"
ATTEMPTS = "conveyor_job_attempts"
OPEN = "state IN ('queued', 'running', 'scheduled') OR (state = 'dead' AND replayed_as IS NULL)"
DEAD = "state = 'dead' AND replayed_as IS NULL"

# (name, table, columns, predicate or None, extra PostgreSQL options)
NEW: list[tuple[str, str, list[str], str | None, dict[str, Any]]] = [
    ("ix_conveyor_jobs_state_created", JOBS, ["state", "created_at", "id"], None, {}),
    ("ix_conveyor_jobs_queue_created", JOBS, ["queue", "created_at", "id"], None, {}),
    ("ix_conveyor_jobs_open", JOBS, ["queue", "state", "updated_at"], OPEN, {}),
    ("ix_conveyor_jobs_due", JOBS, ["run_at"], "state = 'scheduled'", {}),
    ("ix_conveyor_jobs_leases", JOBS, ["lease_expires_at"], "state = 'running'", {}),
    ("ix_conveyor_jobs_finished", JOBS, ["state", "finished_at"], "finished_at IS NOT NULL", {}),
    (
        "ix_conveyor_jobs_dead_letters",
        JOBS,
        ["finished_at", "id"],
        DEAD,
        {"postgresql_include": ["task", "error_type", "queue"]},
    ),
    ("ix_conveyor_jobs_replays", JOBS, ["replay_of"], "replay_of IS NOT NULL", {}),
    ("ix_conveyor_job_attempts_outcome_finished", ATTEMPTS, ["outcome", "finished_at"], None, {}),
]
PAYLOAD = "ix_conveyor_jobs_payload"
"""GIN over the payload (``jsonb_path_ops``: ``@>`` only, smaller and faster than the
default opclass); PostgreSQL only."""

# (name, columns) of the indexes the new ones replace, all on conveyor_jobs.
OLD: list[tuple[str, list[str]]] = [
    ("ix_conveyor_jobs_state_queue", ["state", "queue"]),
    ("ix_conveyor_jobs_state_run_at", ["state", "run_at"]),
    ("ix_conveyor_jobs_state_lease", ["state", "lease_expires_at"]),
    ("ix_conveyor_jobs_replay_of", ["replay_of"]),
    ("ix_conveyor_jobs_state_finished", ["state", "finished_at"]),
]


def _postgresql() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def _where(predicate: str | None) -> dict[str, Any]:
    if predicate is None:
        return {}
    return {"postgresql_where": sa.text(predicate), "sqlite_where": sa.text(predicate)}


def upgrade() -> None:
    if not _postgresql():
        for name, table, columns, predicate, _ in NEW:
            op.create_index(name, table, columns, **_where(predicate))
        for name, _columns in OLD:
            op.drop_index(name, JOBS)
        return
    with op.get_context().autocommit_block():
        for name, table, columns, predicate, options in NEW:
            op.create_index(
                name, table, columns, postgresql_concurrently=True, **_where(predicate), **options
            )
        op.create_index(
            PAYLOAD,
            JOBS,
            ["payload"],
            postgresql_using="gin",
            postgresql_ops={"payload": "jsonb_path_ops"},
            postgresql_concurrently=True,
        )
        for name, _columns in OLD:
            op.drop_index(name, JOBS, postgresql_concurrently=True)


def downgrade() -> None:
    if not _postgresql():
        for name, columns in OLD:
            op.create_index(name, JOBS, columns)
        for name, table, _columns, _predicate, _options in NEW:
            op.drop_index(name, table)
        return
    with op.get_context().autocommit_block():
        for name, columns in OLD:
            op.create_index(name, JOBS, columns, postgresql_concurrently=True)
        op.drop_index(PAYLOAD, JOBS, postgresql_concurrently=True)
        for name, table, _columns, _predicate, _options in NEW:
            op.drop_index(name, table, postgresql_concurrently=True)
