"""The job catalog in the ledger: what each job type looks like, as the workers declared it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from conveyor.worker.ledger.database import Database
from conveyor.worker.models import DeclaredJob


class CatalogStore(Database):
    """Rows of ``conveyor_job_catalog``: written by starting workers, read by producers."""

    def declare(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or replace each job type's row (the latest worker to start wins)."""
        if not rows:
            return
        statement = self._insert_into(DeclaredJob.__table__).values(list(rows))
        updated = {column: statement.excluded[column] for column in rows[0] if column != "name"}
        with self.transaction() as session:
            session.execute(statement.on_conflict_do_update(index_elements=["name"], set_=updated))

    def declared(self, name: str) -> DeclaredJob | None:
        with self.session() as session:
            return session.get(DeclaredJob, name)

    def catalog(self) -> Sequence[DeclaredJob]:
        with self.session() as session:
            return session.scalars(select(DeclaredJob).order_by(DeclaredJob.name)).all()
