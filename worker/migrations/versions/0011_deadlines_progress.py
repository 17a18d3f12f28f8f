"""Deadlines (when a job not started by then is cancelled, and why), and jobs' progress.

``expires_at`` is the deadline given at enqueue (``expires_in`` / ``expires_at``); a
claim or the relay that finds it passed marks the job ``cancelled`` with
``cancel_reason = 'expired'`` (docs/jobs.md, "Deadlines"). Both columns are nullable
without a default: adding them rewrites no rows on PostgreSQL.

``progress_*`` hold the last ``ctx.progress(done, total, note)`` of a running job
(docs/jobs.md, "Progress"), written outside the job's transaction; nullable alike.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("conveyor_jobs") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("cancel_reason", sa.String(32), nullable=True))
        batch.add_column(sa.Column("progress_done", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("progress_total", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("progress_note", sa.String(200), nullable=True))
        batch.add_column(sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conveyor_jobs") as batch:
        for column in ("progress_at", "progress_note", "progress_total", "progress_done"):
            batch.drop_column(column)
        batch.drop_column("cancel_reason")
        batch.drop_column("expires_at")
