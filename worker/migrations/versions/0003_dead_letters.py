"""Dead-letter replay links and the audit log of replays and purges.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("conveyor_jobs") as batch:
        batch.add_column(sa.Column("replay_of", sa.String(64), nullable=True))
        batch.add_column(sa.Column("replayed_as", sa.String(64), nullable=True))
    op.create_index("ix_conveyor_jobs_replay_of", "conveyor_jobs", ["replay_of"])
    op.create_index("ix_conveyor_jobs_state_finished", "conveyor_jobs", ["state", "finished_at"])
    op.create_table(
        "conveyor_audit",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("filters", JSON, nullable=False),
        sa.Column("job_ids", JSON, nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
    )
    op.create_index("ix_conveyor_audit_at", "conveyor_audit", ["at"])


def downgrade() -> None:
    op.drop_table("conveyor_audit")
    op.drop_index("ix_conveyor_jobs_state_finished", "conveyor_jobs")
    op.drop_index("ix_conveyor_jobs_replay_of", "conveyor_jobs")
    with op.batch_alter_table("conveyor_jobs") as batch:
        batch.drop_column("replayed_as")
        batch.drop_column("replay_of")
