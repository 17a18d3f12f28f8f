"""Alembic environment: migrates the ledger URL that :mod:`worker.migrate` passes in."""

from __future__ import annotations

from alembic import context

from conveyor.worker.ledger import make_engine
from conveyor.worker.models import Base

config = context.config
url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
if not url:
    raise RuntimeError("no database URL given to the migrations")

engine = make_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
