"""Periodic jobs' schedules, and the shared state of rate and concurrency limits.

- ``conveyor_schedules``: one row per periodic job (docs/jobs.md, "Periodic jobs"): its
  definition as the relay last synced it, whether it is paused, the last tick handled and
  the next one due. The job of each tick carries the idempotency key
  ``schedule:<name>:<tick>``, so the ledger's unique key lets only one job exist per tick
  whichever relay writes it.
- ``conveyor_rate_limits``: one row per rate-limited job or key: the next start slot
  (``next_at``, the "theoretical arrival time" of the generic cell rate algorithm) and a
  temporary slower interval that a job's ``RetryAfter`` set, as Unix times (seconds, not
  timestamps, so that one statement reserves a slot on PostgreSQL and SQLite alike).
- ``conveyor_jobs.limit_key`` / ``limit_max``: the concurrency key a job was claimed or
  parked under and its limit; ``rate_slot_at`` / ``rate_key``: the start slot a
  rate-limited job waits for, and its key (a ``RetryAfter`` moves the key's waiting jobs).
  Partial indexes cover the unfinished jobs that have a key and the jobs holding a slot.

All new columns are nullable without a default: adding them rewrites no rows.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
OPEN_WITH_KEY = "limit_key IS NOT NULL AND state IN ('queued', 'scheduled', 'running')"
RATE_WAITING = "rate_slot_at IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "conveyor_schedules",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(200), nullable=True),
        sa.Column("spec", sa.String(300), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("last_tick_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_tick_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_job_id", sa.String(64), nullable=True),
        sa.Column("last_outcome", sa.String(32), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "conveyor_rate_limits",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("next_at", sa.Float(), nullable=False),
        sa.Column("slow_interval_s", sa.Float(), nullable=True),
        sa.Column("slow_until", sa.Float(), nullable=True),
    )
    with op.batch_alter_table("conveyor_jobs") as batch:
        batch.add_column(sa.Column("limit_key", sa.String(255), nullable=True))
        batch.add_column(sa.Column("limit_max", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("rate_slot_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("rate_key", sa.String(255), nullable=True))
    op.create_index(
        "ix_conveyor_jobs_limit_key",
        "conveyor_jobs",
        ["limit_key", "state", "lease_expires_at"],
        postgresql_where=sa.text(OPEN_WITH_KEY),
        sqlite_where=sa.text(OPEN_WITH_KEY),
    )
    op.create_index(
        "ix_conveyor_jobs_rate_waiting",
        "conveyor_jobs",
        ["rate_key"],
        postgresql_where=sa.text(RATE_WAITING),
        sqlite_where=sa.text(RATE_WAITING),
    )


def downgrade() -> None:
    op.drop_index("ix_conveyor_jobs_rate_waiting", table_name="conveyor_jobs")
    op.drop_index("ix_conveyor_jobs_limit_key", table_name="conveyor_jobs")
    with op.batch_alter_table("conveyor_jobs") as batch:
        for column in ("rate_key", "rate_slot_at", "limit_max", "limit_key"):
            batch.drop_column(column)
    op.drop_table("conveyor_rate_limits")
    op.drop_table("conveyor_schedules")
