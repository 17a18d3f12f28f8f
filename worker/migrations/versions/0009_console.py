"""The console: who ran each failed attempt and its traceback, and the console's sessions.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("conveyor_job_attempts", sa.Column("worker", sa.String(255), nullable=True))
    op.add_column("conveyor_job_attempts", sa.Column("error_traceback", sa.Text(), nullable=True))
    op.create_table(
        "conveyor_console_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(36), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
    )
    op.create_index(
        "ix_conveyor_console_sessions_expires", "conveyor_console_sessions", ["expires_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_conveyor_console_sessions_expires", "conveyor_console_sessions")
    op.drop_table("conveyor_console_sessions")
    op.drop_column("conveyor_job_attempts", "error_traceback")
    op.drop_column("conveyor_job_attempts", "worker")
