"""Headers every API and console response carries, and the request id that ties an answer
to the server's log.

:class:`Hygiene` is the outermost middleware, so the headers are on every response,
problems and the 500 of :class:`~worker.api.problems.CatchAll` included:

- ``X-Request-ID``: the caller's own, when it sends a well-formed one (1-128 letters,
  digits, ``.``, ``_``, ``-``), else a new random one; the same id is in every problem
  document's ``request_id`` (:data:`REQUEST_ID`, read by
  :func:`~worker.api.problems.problem_response`), so a caller can quote it;
- ``X-Content-Type-Options: nosniff``: a browser never guesses a type;
- ``Cache-Control: no-store`` on everything but the console's static files: the answers
  hold job data (payloads, results, errors) that no cache should keep;
- ``Strict-Transport-Security`` when the request came over TLS (``https``, as the server
  sees it behind a proxy that says so: uvicorn's ``--proxy-headers``).

CORS is off unless ``CONVEYOR_API_CORS_ORIGINS`` names origins (:func:`cors_options`):
then FastAPI's own ``CORSMiddleware`` answers those origins, and no other.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from typing import Any, Final

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID: ContextVar[str | None] = ContextVar("conveyor_request_id", default=None)
"""The id of the request being answered, while it is (None outside a request)."""
REQUEST_ID_HEADER: Final = "X-Request-ID"
_WELL_FORMED = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
HSTS: Final = "max-age=31536000; includeSubDomains"
STATIC_PREFIX: Final = "/console/static/"


def request_id_of(scope: Scope) -> str:
    """The caller's ``X-Request-ID`` if well-formed, else a new one."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = str(value.decode("latin-1"))
            if _WELL_FORMED.match(text):
                return text
            break
    return uuid.uuid4().hex


class Hygiene:
    """ASGI middleware: the request id and the security headers (the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        token = REQUEST_ID.set(request_id)
        secure = scope.get("scheme") == "https"
        cacheable = str(scope.get("path", "")).startswith(STATIC_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                headers["X-Content-Type-Options"] = "nosniff"
                if not cacheable:
                    headers["Cache-Control"] = "no-store"
                if secure:
                    headers["Strict-Transport-Security"] = HSTS
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            REQUEST_ID.reset(token)


def cors_options(origins: list[str]) -> dict[str, Any]:
    """``CORSMiddleware``'s options for ``origins``: those origins only, the methods and
    headers the API uses, no cookies (the API takes bearer keys, not sessions)."""
    return {
        "allow_origins": origins,
        "allow_methods": ["GET", "POST", "DELETE"],
        "allow_headers": ["Authorization", "Content-Type", "Idempotency-Key", REQUEST_ID_HEADER],
        "expose_headers": [REQUEST_ID_HEADER, "Retry-After", "Location"],
        "allow_credentials": False,
    }
