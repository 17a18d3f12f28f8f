"""Indexes for the relay: due scheduled jobs and expired leases.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_conveyor_jobs_state_run_at", "conveyor_jobs", ["state", "run_at"])
    op.create_index("ix_conveyor_jobs_state_lease", "conveyor_jobs", ["state", "lease_expires_at"])


def downgrade() -> None:
    op.drop_index("ix_conveyor_jobs_state_lease", "conveyor_jobs")
    op.drop_index("ix_conveyor_jobs_state_run_at", "conveyor_jobs")
