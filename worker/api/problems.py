"""Every error the API answers is an RFC 9457 problem (``application/problem+json``).

Three kinds of exceptions become problems here:

- :class:`ProblemError`, raised by the API's own code with a status and a problem type;
- Starlette's and FastAPI's own: an unknown route (404), a wrong method (405), and
  request validation (400 for a bad query, path or header; 422 for a body);
- Conveyor's errors and outages: an unknown task or invalid payload (422), an unknown job
  (404), a broker or ledger that cannot be reached (503).

Anything else is a 500 whose body says nothing about the cause (:class:`CatchAll`). Error
bodies never quote a request's payload: validation errors carry where and why, not the
input, and unexpected errors are logged by type and stack only, since exception messages
(a database error's parameters, say) may contain payload values.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, Literal, cast, get_args

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel, Field
from sqlalchemy.exc import InterfaceError as LedgerInterfaceError
from sqlalchemy.exc import OperationalError as LedgerError
from sqlalchemy.exc import TimeoutError as LedgerPoolTimeout
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.worker.admission import IdempotencyConflict, PayloadTooLarge
from conveyor.worker.api.hygiene import REQUEST_ID
from conveyor.worker.errors import (
    EnqueueError,
    JobNotFound,
    PayloadInvalid,
    UnknownTask,
    UsageError,
)
from conveyor.worker.observability.sentry import report_unexpected

log = logging.getLogger("conveyor.api")

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:conveyor:problem:"
RETRY_OUTAGE_S = 5
"""``Retry-After`` sent with a 503 for an unreachable broker or ledger."""

Location = Literal["body", "query", "path", "header"]
LOCATIONS = frozenset(get_args(Location))


class FieldError(BaseModel):
    """One reason a request was refused: where, which field, and why (never the value)."""

    location: Location = Field(examples=["body"])
    field: str = Field(examples=["priority"], description="Dotted path within the location.")
    detail: str = Field(examples=["Input should be less than or equal to 9"])
    code: str = Field(examples=["less_than_equal"], description="A stable machine code.")


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str = Field(
        "about:blank",
        examples=["urn:conveyor:problem:idempotency-key-reused"],
        description="Identifies the problem; `about:blank` when the status says it all.",
    )
    title: str = Field(examples=["Idempotency key reused"])
    status: int = Field(examples=[409])
    detail: str | None = Field(
        None, examples=["key 'order-1' belongs to a job with another task or payload"]
    )
    instance: str | None = Field(None, examples=["/v1/jobs"])
    errors: list[FieldError] | None = None
    request_id: str | None = Field(
        None,
        examples=["order-42.retry_1"],
        description="The request's `X-Request-ID` (the caller's own, or one the server made).",
    )


class ProblemError(Exception):
    """Raised by the API's code to answer with a problem.

    ``kind`` names a problem type of our own (``urn:conveyor:problem:<kind>``) with its
    own ``title``; without it the type is ``about:blank`` and the title the status phrase.
    """

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        kind: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        errors: list[FieldError] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or HTTPStatus(status).phrase)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.title = title
        self.headers = headers or {}
        self.errors = errors
        self.extensions = extensions or {}


def problem_response(problem: ProblemError, instance: str | None = None) -> Response:
    """The problem as a response; its ``request_id`` is the request's (X-Request-ID)."""
    body = problem_body(problem, instance)
    request_id = REQUEST_ID.get()
    if request_id is not None:
        body["request_id"] = request_id
    return JSONResponse(
        body,
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_JSON,
    )


def problem_body(problem: ProblemError, instance: str | None = None) -> dict[str, Any]:
    """The problem as its JSON object (a response's body, or one item of a batch's)."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + problem.kind if problem.kind else "about:blank",
        "title": problem.title or HTTPStatus(problem.status).phrase,
        "status": problem.status,
    }
    if problem.detail:
        body["detail"] = problem.detail
    if instance:
        body["instance"] = instance
    if problem.errors is not None:
        body["errors"] = [error.model_dump() for error in problem.errors]
    body.update(problem.extensions)
    return body


def field_errors(errors: Any, *, default: Location = "body") -> list[FieldError]:
    """Pydantic's errors as :class:`FieldError` s, dropping the offending input values."""
    found = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        location = default
        if loc and loc[0] in LOCATIONS:
            location = cast(Location, loc.pop(0))
        found.append(
            FieldError(
                location=location,
                field=".".join(loc),
                detail=str(error.get("msg", "invalid")),
                code=str(error.get("type", "invalid")),
            )
        )
    return found


def invalid_request(errors: Any) -> ProblemError:
    """400 for bad query, path or header parameters; 422 when only the body is at fault."""
    found = field_errors(errors)
    if any(error.code == "json_invalid" for error in found):
        return ProblemError(
            400, "the request body is not valid JSON", kind="malformed-json", title="Malformed JSON"
        )
    if all(error.location == "body" for error in found):
        return ProblemError(
            422,
            "the request body does not match the schema",
            kind="invalid-body",
            title="Invalid request body",
            errors=found,
        )
    return ProblemError(
        400,
        "a query, path or header parameter is invalid",
        kind="invalid-parameters",
        title="Invalid parameters",
        errors=[error for error in found if error.location != "body"],
    )


def translate(exc: Exception) -> ProblemError | None:
    """The problem for an exception we know how to answer, else None (a 500)."""
    for kinds, answer in ANSWERS:
        if isinstance(exc, kinds):
            return answer(exc)
    return None


def _http(exc: Any) -> ProblemError:
    phrase = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else None
    if exc.status_code == 404 and detail is None:
        detail = "no such resource"
    return ProblemError(exc.status_code, detail, headers=dict(exc.headers or {}))


Answer = Callable[[Any], ProblemError]
ANSWERS: list[tuple[type[Exception] | tuple[type[Exception], ...], Answer]] = [
    (ProblemError, lambda exc: exc),
    (RequestValidationError, lambda exc: invalid_request(exc.errors())),
    (HTTPException, _http),
    (
        UnknownTask,
        lambda exc: ProblemError(422, str(exc), kind="unknown-task", title="Unknown task"),
    ),
    (
        PayloadTooLarge,
        lambda exc: ProblemError(
            413, str(exc), kind="payload-too-large", title="Payload too large"
        ),
    ),
    (
        PayloadInvalid,
        lambda exc: ProblemError(422, str(exc), kind="invalid-payload", title="Invalid payload"),
    ),
    (
        IdempotencyConflict,
        lambda exc: ProblemError(
            409, str(exc), kind="idempotency-key-reused", title="Idempotency key reused"
        ),
    ),
    (JobNotFound, lambda exc: ProblemError(404, str(exc))),
    (
        EnqueueError,
        lambda _: unavailable("broker", "the broker did not take the job; nothing was enqueued"),
    ),
    (BrokerError, lambda _: unavailable("broker", "the broker cannot be reached")),
    (
        (LedgerError, LedgerInterfaceError, LedgerPoolTimeout),
        lambda _: unavailable("ledger", "the ledger database cannot be reached"),
    ),
    (UsageError, lambda exc: ProblemError(400, str(exc), kind="bad-request", title="Bad request")),
]
"""What each exception the API explains answers, first match wins (so subclasses first)."""


def unavailable(what: str, detail: str) -> ProblemError:
    return ProblemError(
        503,
        detail,
        kind=f"{what}-unavailable",
        title=f"{what.capitalize()} unavailable",
        headers={"Retry-After": str(RETRY_OUTAGE_S)},
    )


def allowed_methods(routes: Sequence[APIRoute], path: str) -> list[str]:
    """The methods of the most specific routes for ``path`` (fewest path parameters), as
    the OpenAPI document lists them: ``/v1/dead-letters/purge`` is POST, not also the GET
    of ``/v1/dead-letters/{job_id}``."""
    matching = [route for route in routes if route.path_regex.match(path)]
    if not matching:
        return []
    fewest = min(len(route.param_convertors) for route in matching)
    best = [route for route in matching if len(route.param_convertors) == fewest]
    return sorted({method for route in best for method in route.methods or ()})


def install_handlers(app: FastAPI, routes: Sequence[APIRoute]) -> None:
    """Answer every known exception with its problem (see the module docstring).

    ``routes`` are the API's routes, to name every method a path serves in a 405's
    ``Allow`` header (Starlette names only those of the first route whose path matched).
    """

    async def handle(request: Request, exc: Exception) -> Response:
        problem = translate(exc)
        if problem is None:  # not ours to explain: let CatchAll log it and answer 500
            raise exc
        if problem.status == 405:
            problem.headers["Allow"] = ", ".join(allowed_methods(routes, request.url.path))
        return problem_response(problem, request.url.path)

    for kind in (
        ProblemError,
        RequestValidationError,
        HTTPException,
        UnknownTask,
        PayloadInvalid,
        JobNotFound,
        EnqueueError,
        UsageError,
        BrokerError,
        LedgerError,
        LedgerInterfaceError,
        LedgerPoolTimeout,
    ):
        app.add_exception_handler(kind, handle)


class CatchAll:
    """Outermost middleware: any unexpected exception becomes a bare 500 problem.

    Starlette's own error middleware would re-raise to the server, which logs the
    exception's message; ours logs the route, type and stack only, and does not re-raise,
    so it also reports the exception to Sentry itself (the FastAPI integration never sees it).
    If the response had already started, nothing more can be sent and the client sees a
    cut-off response.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
            stack = "".join(traceback.format_tb(exc.__traceback__))
            log.error(
                "api.unexpected_error",
                extra={
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "error_type": kind,
                    "stack": stack,
                },
            )
            report_unexpected(exc)
            if not started:
                problem = ProblemError(500, "an unexpected error occurred; it has been logged")
                await problem_response(problem, scope.get("path"))(scope, receive, send)


PROBLEM_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed JSON, or an invalid query, path or header parameter.",
    401: "No API key, or one that is unknown or revoked.",
    403: "The API key lacks the scope this operation needs.",
    404: "No such job or dead letter.",
    409: "A conflict with the job's current state or idempotency key.",
    413: "The request body is larger than the configured limit.",
    415: "The request body is not application/json.",
    422: "The body does not match its schema, names an unknown task, or fails the task's schema.",
    429: "Too many requests for this API key; see Retry-After.",
    500: "An unexpected error; the body says nothing more.",
    503: "The ledger or the broker cannot be reached; see Retry-After.",
}


AUTHENTICATED = (401, 403, 429, 500, 503)
"""What any route behind an API key may answer."""


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, all problem documents."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {
        status: {
            "description": PROBLEM_DESCRIPTIONS[status],
            "content": {PROBLEM_JSON: {"schema": schema}},
        }
        for status in statuses
    }
