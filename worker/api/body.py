"""Request bodies: a size limit (413), JSON only (415), parsed after authentication.

Bodies are parsed by :func:`json_body`, a dependency listed after the one that checks the
API key, so a caller without a valid key learns nothing about what a body should be. It
refuses a body that is not ``application/json`` (415), not JSON (400) or not the model
(422). :class:`BodyLimit` refuses an oversized body (413): at once when ``Content-Length``
says so, or as soon as the bytes read pass the limit (chunked uploads, lying headers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from email.message import Message as MimeHeader
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.worker.api.problems import ProblemError, invalid_request, problem_response

M = TypeVar("M", bound=BaseModel)


def too_large(limit_bytes: int) -> ProblemError:
    return ProblemError(413, f"the request body is larger than {limit_bytes} bytes")


class BodyLimit:
    """ASGI middleware: no request body may exceed ``limit_bytes``."""

    def __init__(self, app: ASGIApp, *, limit_bytes: int) -> None:
        self.app = app
        self.limit_bytes = limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit_bytes:
            response = problem_response(too_large(self.limit_bytes), scope.get("path"))
            await response(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            # Raised inside the endpoint's body read, so the exception handlers answer it.
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit_bytes:
                    raise too_large(self.limit_bytes)
            return message

        await self.app(scope, counting_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def is_json(content_type: str | None) -> bool:
    """``application/json`` or any ``application/*+json``, parameters allowed."""
    if not content_type:
        return False
    header = MimeHeader()
    header["content-type"] = content_type
    subtype = header.get_content_subtype()
    return header.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency that parses the request body as ``model`` (415, 400 or 422 otherwise)."""

    async def parse(request: Request) -> M:
        if not is_json(request.headers.get("content-type")):
            raise ProblemError(415, "send the body as application/json")
        raw = await request.body()
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise invalid_request(_in_body(exc.errors())) from None

    return parse


def _in_body(errors: list[Any]) -> list[dict[str, Any]]:
    return [{**error, "loc": ("body", *error["loc"])} for error in errors]


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` describing a :func:`json_body` body (its schema is added by the app)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
