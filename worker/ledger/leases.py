"""Leases in the ledger: a named duty that one process at a time holds.

A lease is one row: its holder, its term and when it expires. :meth:`LeaseStore.take_lease`
is a single upsert that succeeds only for the holder or once the row has expired, so two
processes can never both hold it, whichever clocks they run on: on PostgreSQL the times
are the database's own. :mod:`worker.leader` renews it about once a second.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import case, func, or_, select, update

from conveyor.worker.ledger.database import Database
from conveyor.worker.models import Lease, utcnow


class LeaseStore(Database):
    """Rows of ``conveyor_leases``."""

    def _now(self) -> Any:
        """The database's clock on PostgreSQL (shared by every host); this process's on
        SQLite, which only processes of one machine share."""
        return func.now() if self.is_postgresql else utcnow()

    def take_lease(self, name: str, holder: str, *, ttl_s: float) -> int | None:
        """Take or renew lease ``name`` for ``ttl_s`` seconds; its term, or None when
        another holder's lease has not expired."""
        table = Lease.__table__
        now = self._now()
        expires = now + timedelta(seconds=ttl_s)
        statement = (
            self._insert_into(table)
            .values(name=name, holder=holder, term=1, expires_at=expires, acquired_at=now)
            .on_conflict_do_update(
                index_elements=["name"],
                set_={
                    "holder": holder,
                    "expires_at": expires,
                    "term": case((table.c.holder == holder, table.c.term), else_=table.c.term + 1),
                    "acquired_at": case((table.c.holder == holder, table.c.acquired_at), else_=now),
                },
                where=or_(table.c.holder == holder, table.c.expires_at < now),
            )
            .returning(table.c.term)
        )
        with self.transaction() as session:
            term = session.execute(statement).scalar()
        return None if term is None else int(term)

    def give_up_lease(self, name: str, holder: str) -> bool:
        """End ``holder``'s lease now, so another process takes it at once (a clean stop);
        False if it held none."""
        statement = (
            update(Lease)
            .where(Lease.name == name, Lease.holder == holder)
            .values(expires_at=self._now() - timedelta(seconds=1))
        )
        with self.transaction() as session:
            return bool(session.execute(statement).rowcount)  # type: ignore[attr-defined]

    def lease(self, name: str) -> Lease | None:
        """Lease ``name`` as it stands (expired or not), or None if never taken."""
        with self.session() as session:
            return session.scalar(select(Lease).where(Lease.name == name))
