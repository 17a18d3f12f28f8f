"""The job catalog: each job type as the workers declared it, for producers without its code.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "conveyor_job_catalog",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("queue", sa.String(200), nullable=True),
        sa.Column("payload_schema", JSON, nullable=True),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("backoff", JSON, nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("declared_by", sa.String(255), nullable=False),
        sa.Column("declared_at", TIMESTAMP, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("conveyor_job_catalog")
