"""API keys: who may call the HTTP API, and what they may do.

A key is shown once, when it is created (``conveyor apikey create``), as
``cvk_<prefix>_<secret>``. The ledger keeps only its public prefix (to find the row) and
the SHA-256 of the whole token (to check it, in constant time); a leaked ledger does not
leak usable keys. Revoking keeps the row, so the name stays taken and audit entries that
name it (``apikey:<name>``) stay meaningful.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from conveyor.worker.errors import UsageError
from conveyor.worker.ledger import Ledger
from conveyor.worker.models import ApiKey, utcnow

TOKEN_PREFIX: Final = "cvk"  # noqa: S105 - the fixed start of every token, not a secret
PREFIX_BYTES: Final = 6
SECRET_BYTES: Final = 32
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
PREFIX_PATTERN: Final = re.compile(rf"[0-9a-f]{{{2 * PREFIX_BYTES}}}")


class Scope(StrEnum):
    """What a key may do. ``admin`` implies the other three."""

    ENQUEUE = "enqueue"
    """Create and cancel jobs."""
    READ = "read"
    """Read jobs, dead letters and queues."""
    OPERATE = "operate"
    """Replay and purge dead letters, pause and resume queues (implies ``read``)."""
    ADMIN = "admin"
    """Everything, and API keys in the console."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a valid, unrevoked key."""

    key_id: str
    name: str
    scopes: frozenset[Scope]

    @property
    def actor(self) -> str:
        """How audit entries name this caller."""
        return f"apikey:{self.name}"

    def allows(self, needed: Scope) -> bool:
        if needed in self.scopes or Scope.ADMIN in self.scopes:
            return True
        return needed is Scope.READ and Scope.OPERATE in self.scopes


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_prefix(token: str) -> str | None:
    """The public prefix of a well-formed token, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[2]:
        return None
    return parts[1] if PREFIX_PATTERN.fullmatch(parts[1]) else None


def create_key(
    ledger: Ledger, name: str, scopes: Sequence[Scope], *, actor: str | None = None
) -> tuple[ApiKey, str]:
    """Store a new key and return it with its token: the only time the token exists.

    Audited as ``actor``'s (``conveyor dlq audit``), by default this process's
    ``user@host``.
    """
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError("a key name has 1-100 letters, digits, '.', '_' or '-'")
    if not scopes:
        raise UsageError("give a key at least one scope")
    prefix = secrets.token_hex(PREFIX_BYTES)
    token = f"{TOKEN_PREFIX}_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    key = ApiKey(
        id=str(uuid.uuid4()),
        name=name,
        prefix=prefix,
        token_hash=hash_token(token),
        scopes=sorted({Scope(scope).value for scope in scopes}),
        created_at=utcnow(),
    )
    if not ledger.add_key(key, actor=actor or process_actor()):
        raise UsageError(f"an API key named {name!r} exists already (maybe revoked)")
    return key, token


def list_keys(ledger: Ledger) -> Sequence[ApiKey]:
    return ledger.keys()


def revoke_key(ledger: Ledger, name: str, *, actor: str | None = None) -> bool:
    """Revoke the key called ``name``, audited as ``actor``'s (by default this process's
    ``user@host``); False if it was revoked before.

    Raises :class:`~worker.errors.UsageError` when there is no such key. Every API server
    stops accepting it at once (:mod:`worker.api.revocations`).
    """
    revoked = ledger.revoke_key(name, actor=actor or process_actor())
    if revoked is None:
        raise UsageError(f"no API key named {name!r}")
    return revoked


def process_actor() -> str:
    """Who runs this process, for the audit log: ``user@host``."""
    import getpass
    import socket

    return f"{getpass.getuser()}@{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class Lookup:
    """What checking a token found: a principal, or why not."""

    principal: Principal | None
    revoked: bool = False


def check_token(ledger: Ledger, token: str) -> Lookup:
    """Find the key for ``token`` by its prefix and compare hashes in constant time."""
    prefix = token_prefix(token)
    if prefix is None:
        return Lookup(None)
    key = ledger.key_by_prefix(prefix)
    if key is None or not hmac.compare_digest(key.token_hash, hash_token(token)):
        return Lookup(None)
    if key.revoked_at is not None:
        return Lookup(None, revoked=True)
    known = {scope.value for scope in Scope}
    scopes = frozenset(Scope(scope) for scope in key.scopes if scope in known)
    return Lookup(Principal(key.id, key.name, scopes))
