"""The enqueue's W3C trace context on each job, so the relay publishes it in that trace.

Both columns are nullable without a default: adding them rewrites no rows on PostgreSQL.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("conveyor_jobs") as batch:
        batch.add_column(sa.Column("traceparent", sa.String(64), nullable=True))
        batch.add_column(sa.Column("tracestate", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conveyor_jobs") as batch:
        batch.drop_column("tracestate")
        batch.drop_column("traceparent")
