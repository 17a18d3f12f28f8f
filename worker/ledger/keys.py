"""The API's keys in the ledger database (the token logic is :mod:`worker.api.keys`), and
the API's shared rate buckets.

A revocation is announced on :data:`REVOKED_CHANNEL` (PostgreSQL ``NOTIFY``, sent when
its transaction commits), so every API process drops its cached keys at once
(:mod:`worker.api.revocations`).

The buckets (:meth:`KeyStore.take_token`) are rows of ``conveyor_rate_limits`` under keys
of their own (``api:...``, ``auth-failures:...``), so every API process spends from the
same bucket: N processes allow the rate once, not N times.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, cast

from sqlalchemy import Table, bindparam, case, delete, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from conveyor.worker.ledger.database import Database
from conveyor.worker.ledger.statements import _direct_sql
from conveyor.worker.models import ApiKey, AuditEntry, RateLimit, utcnow

REVOKED_CHANNEL: Final = "conveyor_key_revoked"
"""The channel a revocation is announced on; the payload is the key's name."""

_rates = cast(Table, RateLimit.__table__)
_now: Any = bindparam("b_now")
_interval: Any = bindparam("b_interval")
_tolerance: Any = bindparam("b_tolerance")


def _take(insert: Any) -> Any:
    """The generic cell rate algorithm as one conditional upsert: the bucket's next token
    (``next_at``) moves one interval on, unless it lies more than ``tolerance`` (the burst
    less one token) ahead of now; then no row comes back and nothing is spent."""
    stored = _rates.c
    start = case((stored.next_at > _now, stored.next_at), else_=_now)
    return (
        insert(_rates)
        .values(key=bindparam("b_key"), next_at=_now + _interval)
        .on_conflict_do_update(
            index_elements=[stored.key],
            set_={"next_at": start + _interval},
            where=start - _now <= _tolerance,
        )
        .returning(stored.next_at)
    )


TAKE_PG, TAKE_SQLITE = _take(postgresql.insert), _take(sqlite.insert)
TAKE_PG_SQL = _direct_sql(TAKE_PG)
IDLE_BUCKET_S: Final = 3600.0
"""A bucket (or rate key) untouched this long is forgotten: it is full again anyway."""
NEXT_AT_PG = "SELECT next_at FROM conveyor_rate_limits WHERE key = %(b_key)s"


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
                if self.is_postgresql:
                    session.execute(
                        text("SELECT pg_notify(:channel, :name)"),
                        {"channel": REVOKED_CHANNEL, "name": name},
                    )
                return True
            exists = session.scalar(select(ApiKey.id).where(ApiKey.name == name))
            return False if exists is not None else None

    def key_by_prefix(self, prefix: str) -> ApiKey | None:
        with self.session() as session:
            return session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))

    def take_token(self, bucket: str, *, interval_s: float, burst: float, now: float) -> float:
        """Spend a token of ``bucket`` (one every ``interval_s``, up to ``burst`` at once;
        ``now`` in Unix seconds): 0.0 if spent, else the seconds until one is due."""
        params = {
            "b_key": bucket,
            "b_now": now,
            "b_interval": interval_s,
            "b_tolerance": (burst - 1.0) * interval_s,
        }
        if self.is_postgresql:
            sql, constants = TAKE_PG_SQL
            if self.direct(sql, constants | params) is not None:
                return 0.0
        else:
            with self.autocommit() as connection:
                if connection.execute(TAKE_SQLITE, params).first() is not None:
                    return 0.0
        return max(
            interval_s / 1000, self.peek_token(bucket, interval_s=interval_s, burst=burst, now=now)
        )

    def peek_token(self, bucket: str, *, interval_s: float, burst: float, now: float) -> float:
        """The seconds until ``bucket`` has a token (0.0: it has one now), spending none."""
        if self.is_postgresql:
            row = self.direct(NEXT_AT_PG, {"b_key": bucket})
            next_at = row[0] if row else None
        else:
            with self.session() as session:
                next_at = session.scalar(select(_rates.c.next_at).where(_rates.c.key == bucket))
        if next_at is None:
            return 0.0
        return max(0.0, float(next_at) - (burst - 1.0) * interval_s - now)

    def forget_idle_buckets(self, *, now: float, idle_s: float = IDLE_BUCKET_S) -> int:
        """Delete the rows of ``conveyor_rate_limits`` idle for ``idle_s`` (their next slot
        and any slower pace long past: a missing row means the same), so a flood of failing
        addresses leaves no row behind for good; how many went. The relay calls it."""
        stored = _rates.c
        idle = now - idle_s
        statement = delete(_rates).where(
            stored.next_at < idle, stored.slow_until.is_(None) | (stored.slow_until < idle)
        )
        with self.autocommit() as connection:
            return connection.execute(statement).rowcount


def _audit(actor: str, action: str, name: str, scopes: str | None) -> AuditEntry:
    filters = {"key": name} if scopes is None else {"key": name, "scopes": scopes}
    return AuditEntry(at=utcnow(), actor=actor, action=action, filters=filters, job_ids=[], count=0)
