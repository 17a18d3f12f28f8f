"""Authentication, rate limiting and scopes: the dependency every ``/v1`` route starts with.

``Authorization: Bearer <token>`` is checked against the ledger (:mod:`worker.api.keys`).
A valid key is remembered so a busy producer costs no lookup per request, for as long as
:mod:`worker.api.revocations` listens: a revocation in any process drops the cache at once,
and without the listener nothing is cached. :data:`KEY_CACHE_TTL_S` bounds an entry's life
even so. Invalid tokens are never cached, so a key works as soon as it is created.

Order of the checks, and why: too many failures from this address (429, before any lookup:
guesses cost nothing more) before 401 (who are you) before 429 (spend one of your tokens,
even on a request you are not allowed to make) before 403 (what you may do). A failed
authentication is logged with the client's address and the key's public prefix, never
the token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Final

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from conveyor.worker.api.keys import Principal, Scope, check_token, hash_token, token_prefix
from conveyor.worker.api.problems import ProblemError
from conveyor.worker.api.ratelimit import (
    AuthFailures,
    RateLimiter,
    RouteKind,
    retry_after_header,
)
from conveyor.worker.api.revocations import RevocationListener
from conveyor.worker.ledger import Ledger

log = logging.getLogger("conveyor.api")

KEY_CACHE_TTL_S: Final = 60.0
"""The longest a valid key is trusted without looking at the ledger again."""
KEY_CACHE_MAX: Final = 10_000
"""Entries kept before the cache is cleared (a bound, not an expected size)."""

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `conveyor apikey create`: `Authorization: Bearer cvk_...`.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def unauthorized(detail: str, *, invalid: bool) -> ProblemError:
    challenge = 'Bearer error="invalid_token"' if invalid else "Bearer"
    return ProblemError(401, detail, headers={"WWW-Authenticate": challenge})


class Authenticator:
    """Turns a bearer token into a :class:`~worker.api.keys.Principal`, or a problem."""

    def __init__(
        self,
        ledger: Ledger,
        limiter: RateLimiter,
        failures: AuthFailures,
        *,
        ttl_s: float = KEY_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger
        self.limiter = limiter
        self.failures = failures
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Principal, float]] = {}  # token hash -> (who, until)
        self.revocations = RevocationListener(ledger, self.forget)

    def forget(self) -> None:
        """Drop every cached key (a key was revoked somewhere)."""
        with self._lock:
            self._cache.clear()

    async def authenticate(self, token: str, address: str) -> Principal:
        """The key's principal; raises a 401 problem for an unknown or revoked key, and a
        429 one when ``address`` has failed too often."""
        digest = hash_token(token)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and cached[1] > now and self.revocations.listening:
            return cached[0]
        wait_s = await run_in_threadpool(self.failures.wait_s, address)
        if wait_s > 0:
            raise too_many_failures(wait_s)
        lookup = await run_in_threadpool(check_token, self.ledger, token)
        if lookup.principal is None:
            detail = "the API key was revoked" if lookup.revoked else "the API key is not valid"
            log.warning(
                "api.auth_failed",
                extra={"client": address, "key_prefix": token_prefix(token), "reason": detail},
            )
            await run_in_threadpool(self.failures.failed, address)
            raise unauthorized(detail, invalid=True)
        if self.revocations.listening:
            with self._lock:
                if len(self._cache) >= KEY_CACHE_MAX:
                    self._cache.clear()
                self._cache[digest] = (lookup.principal, now + self.ttl_s)
        return lookup.principal

    def require(self, scope: Scope) -> Callable[..., Awaitable[Principal]]:
        """A dependency that admits callers whose key grants ``scope`` (admin grants all),
        spending a token of the key's bucket for the route's kind."""
        kind = RouteKind.of(scope)

        async def principal(request: Request, credentials: Credentials) -> Principal:
            if credentials is None:
                raise unauthorized("send an API key: Authorization: Bearer <token>", invalid=False)
            who = await self.authenticate(credentials.credentials, client_address(request))
            wait_s = await run_in_threadpool(self.limiter.take, who.key_id, kind)
            if wait_s > 0:
                rate = self.limiter.rates.of(kind)
                raise ProblemError(
                    429,
                    f"this key may make {rate:g} {kind} requests per second",
                    kind="rate-limited",
                    title="Rate limit exceeded",
                    headers={"Retry-After": retry_after_header(wait_s)},
                )
            if not who.allows(scope):
                raise ProblemError(
                    403,
                    f"this key lacks the {scope.value!r} scope",
                    kind="insufficient-scope",
                    title="Insufficient scope",
                    headers={
                        "WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'
                    },
                )
            return who

        return principal


def client_address(request: Request) -> str:
    """The caller's address (behind a proxy, the one uvicorn's ``--proxy-headers`` took
    from ``X-Forwarded-For``)."""
    return request.client.host if request.client else "unknown"


def too_many_failures(wait_s: float) -> ProblemError:
    return ProblemError(
        429,
        "too many failed authentications from this address",
        kind="rate-limited",
        title="Rate limit exceeded",
        headers={"Retry-After": retry_after_header(wait_s)},
    )
