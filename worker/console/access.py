"""Who may use the console, and what they may do: roles, sign-in, sessions, CSRF tokens.

Signing in takes an API key (its scopes give the role) or a name and password from
``CONVEYOR_CONSOLE_USERS``. Either way the browser then holds only a session cookie: a
random token whose SHA-256 is a row of ``conveyor_console_sessions``. Every request looks
the row up (one primary-key read), so signing out, expiry, or revoking the API key signed
in with ends the session at once in every API process. Each session has its own CSRF token,
which every state-changing form sends back.

========  =============================================================  ================
role      may                                                            from a key with
========  =============================================================  ================
viewer    read every page, without payloads, results or tracebacks       ``read``
operator  also see payloads and tracebacks; replay, purge, pause, resume ``operate``
admin     also manage API keys                                           ``admin``
========  =============================================================  ================
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Final

from sqlalchemy import delete, select

from conveyor.worker.api.keys import Scope, check_token, hash_token
from conveyor.worker.errors import UsageError
from conveyor.worker.ledger import Ledger
from conveyor.worker.models import ApiKey, AuditEntry, ConsoleSession, utcnow

SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
"""scrypt's cost (RFC 7914's interactive figures): about 50 ms of one core per check."""


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        return RANKS[self] >= RANKS[needed]


RANKS: Final = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def role_of(scopes: frozenset[Scope]) -> Role | None:
    """The console role an API key's scopes give; None for a key that may only enqueue."""
    if Scope.ADMIN in scopes:
        return Role.ADMIN
    if Scope.OPERATE in scopes:
        return Role.OPERATOR
    return Role.VIEWER if Scope.READ in scopes else None


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64), for ``CONVEYOR_CONSOLE_USERS``."""
    if len(password) < 12:
        raise UsageError("a console password has at least 12 characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    encoded = (base64.b64encode(part).decode() for part in (salt, digest))
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), *encoded])


def check_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` string (constant time)."""
    try:
        kind, n, r, p, salt, digest = encoded.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p)
        )
    except ValueError:
        return False
    return kind == "scrypt" and hmac.compare_digest(actual, expected)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    password_hash: str


def parse_users(entries: list[str]) -> dict[str, User]:
    """``CONVEYOR_CONSOLE_USERS`` entries (``name:role:hash``) by name; a bad one raises."""
    users = {}
    for entry in entries:
        name, _, rest = entry.partition(":")
        role, _, password_hash = rest.partition(":")
        if not name or role not in set(Role) or not password_hash.startswith("scrypt$"):
            raise UsageError(
                f"CONVEYOR_CONSOLE_USERS: {name or entry[:20]!r} is not name:role:hash with "
                "a role of viewer, operator or admin and a hash from "
                "`conveyor console hash-password`"
            )
        users[name] = User(name, Role(role), password_hash)
    return users


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in person behind a request."""

    actor: str
    """How audit entries name them: ``apikey:<name>`` or ``user:<name>``."""
    role: Role
    csrf_token: str
    session_hash: str

    def allows(self, needed: Role) -> bool:
        return self.role.allows(needed)

    def csrf_ok(self, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(sent, self.csrf_token)


class Sessions:
    """Signs people in and out, and finds the session behind a cookie."""

    def __init__(self, ledger: Ledger, *, lifetime_s: float, users: dict[str, User]) -> None:
        self.ledger = ledger
        self.lifetime_s = lifetime_s
        self.users = users

    def with_key(self, token: str) -> str | None:
        """A new session's token for a valid API key that may read; else None."""
        principal = check_token(self.ledger, token).principal
        role = role_of(principal.scopes) if principal is not None else None
        if principal is None or role is None:
            return None
        return self._start(principal.actor, role, key_id=principal.key_id, method="apikey")

    def with_password(self, name: str, password: str) -> str | None:
        """A new session's token for a configured user's right password; else None."""
        user = self.users.get(name)
        if user is None:
            check_password(password, DUMMY_HASH)  # as slow as a real check: names stay secret
            return None
        if not check_password(password, user.password_hash):
            return None
        return self._start(f"user:{user.name}", user.role, key_id=None, method="password")

    def _start(self, actor: str, role: Role, *, key_id: str | None, method: str) -> str:
        token = secrets.token_urlsafe(32)
        now = utcnow()
        with self.ledger.transaction() as session:
            session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now))
            session.add(
                ConsoleSession(
                    token_hash=hash_token(token),
                    actor=actor,
                    role=role,
                    csrf_token=secrets.token_urlsafe(32),
                    key_id=key_id,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.lifetime_s),
                )
            )
            session.add(_audit(actor, "login", {"method": method, "role": role.value}))
        return token

    def find(self, token: str | None) -> Viewer | None:
        """The live session for a cookie's token: not expired, its API key not revoked."""
        if not token or len(token) > 100:
            return None
        query = (
            select(ConsoleSession, ApiKey.revoked_at)
            .outerjoin(ApiKey, ApiKey.id == ConsoleSession.key_id)
            .where(ConsoleSession.token_hash == hash_token(token))
        )
        with self.ledger.session() as session:
            row = session.execute(query).one_or_none()
        if row is None:
            return None
        found, revoked_at = row
        if found.expires_at <= utcnow() or revoked_at is not None:
            return None
        return Viewer(found.actor, Role(found.role), found.csrf_token, found.token_hash)

    def end(self, viewer: Viewer) -> None:
        """Sign out: the session's row goes, so its cookie opens nothing any more."""
        with self.ledger.transaction() as session:
            session.execute(
                delete(ConsoleSession).where(ConsoleSession.token_hash == viewer.session_hash)
            )
            session.add(_audit(viewer.actor, "logout", {}))


DUMMY_HASH: Final = (
    "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="
)
"""A well-formed hash that no password matches: unknown names cost the same as known ones."""


def _audit(actor: str, action: str, filters: dict[str, str]) -> AuditEntry:
    return AuditEntry(at=utcnow(), actor=actor, action=action, filters=filters, job_ids=[], count=0)
