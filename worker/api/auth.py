"""Authentication, rate limiting and scopes: the dependency every ``/v1`` route starts with.

``Authorization: Bearer <token>`` is checked against the ledger (:mod:`worker.api.keys`).
A valid key is remembered for :data:`KEY_CACHE_TTL_S` so a busy producer costs no lookup
per request; that is also the longest a revoked key keeps working on a server that saw it
just before. Invalid tokens are never cached, so a key works as soon as it is created.

Order of the checks, and why: 401 (who are you) before 429 (spend one of your tokens,
even on a request you are not allowed to make) before 403 (what you may do).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Final

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from conveyor.worker.api.keys import Principal, Scope, check_token, hash_token
from conveyor.worker.api.problems import ProblemError
from conveyor.worker.api.ratelimit import RateLimiter, retry_after_header
from conveyor.worker.ledger import Ledger

KEY_CACHE_TTL_S: Final = 2.0
"""How long a valid key is trusted without looking at the ledger again."""
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
        *,
        ttl_s: float = KEY_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger
        self.limiter = limiter
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Principal, float]] = {}  # token hash -> (who, until)

    async def authenticate(self, token: str) -> Principal:
        """The key's principal; raises a 401 problem for an unknown or revoked key."""
        digest = hash_token(token)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        lookup = await run_in_threadpool(check_token, self.ledger, token)
        if lookup.principal is None:
            detail = "the API key was revoked" if lookup.revoked else "the API key is not valid"
            raise unauthorized(detail, invalid=True)
        with self._lock:
            if len(self._cache) >= KEY_CACHE_MAX:
                self._cache.clear()
            self._cache[digest] = (lookup.principal, now + self.ttl_s)
        return lookup.principal

    def require(
        self, scope: Scope
    ) -> Callable[[HTTPAuthorizationCredentials | None], Awaitable[Principal]]:
        """A dependency that admits callers whose key grants ``scope`` (admin grants all)."""

        async def principal(credentials: Credentials) -> Principal:
            if credentials is None:
                raise unauthorized("send an API key: Authorization: Bearer <token>", invalid=False)
            who = await self.authenticate(credentials.credentials)
            wait_s = self.limiter.take(who.key_id)
            if wait_s > 0:
                raise ProblemError(
                    429,
                    f"this key may make {self.limiter.rate_per_s:g} requests per second",
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
