"""The API's keys in the ledger database (the token logic is :mod:`worker.api.keys`)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from conveyor.worker.ledger.database import Database
from conveyor.worker.models import ApiKey, AuditEntry, utcnow


class KeyStore(Database):
    """Rows of ``conveyor_api_keys``: added, listed, revoked, found by prefix."""

    def add_key(self, key: ApiKey, *, actor: str) -> bool:
        """Store ``key``, audited as ``actor``'s; False if its name (or prefix) is taken."""
        try:
            with self.transaction() as session:
                session.add(key)
                session.add(_audit(actor, "key_create", key.name, ",".join(key.scopes)))
        except IntegrityError:
            return False
        return True

    def keys(self) -> Sequence[ApiKey]:
        with self.session() as session:
            return session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.name)).all()

    def revoke_key(self, name: str, *, actor: str) -> bool | None:
        """Revoke the key called ``name``, audited as ``actor``'s: True, False if revoked
        before, None if unknown."""
        with self.transaction() as session:
            revoked = session.execute(
                update(ApiKey)
                .where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
                .returning(ApiKey.id)
            ).scalar_one_or_none()
            if revoked is not None:
                session.add(_audit(actor, "key_revoke", name, None))
                return True
            exists = session.scalar(select(ApiKey.id).where(ApiKey.name == name))
            return False if exists is not None else None

    def key_by_prefix(self, prefix: str) -> ApiKey | None:
        with self.session() as session:
            return session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))


def _audit(actor: str, action: str, name: str, scopes: str | None) -> AuditEntry:
    filters = {"key": name} if scopes is None else {"key": name, "scopes": scopes}
    return AuditEntry(at=utcnow(), actor=actor, action=action, filters=filters, job_ids=[], count=0)
