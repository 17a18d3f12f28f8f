"""``create_api``: the FastAPI application over one :class:`~worker.app.ConveyorApp`.

Built once at start-up by ``conveyor api``; building it connects to nothing (the ledger's
pool and the broker's producer pool fill on first use). The middleware stack, outermost
first: :class:`~worker.api.problems.CatchAll` (any unexpected error is a bare 500
problem), :class:`~worker.api.body.BodyLimit` (413), then FastAPI's routing, whose
exception handlers turn every known error into a problem document.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from conveyor.config.settings import Settings, package_version
from conveyor.worker.api.auth import Authenticator
from conveyor.worker.api.body import BodyLimit
from conveyor.worker.api.catalog import catalog_router
from conveyor.worker.api.dead_letter_schemas import DeadLetterSelection, ReplaySelection
from conveyor.worker.api.dead_letters import dead_letters_router
from conveyor.worker.api.health import health_router, metrics_router
from conveyor.worker.api.hygiene import Hygiene, cors_options
from conveyor.worker.api.jobs import jobs_router
from conveyor.worker.api.problems import CatchAll, Problem, install_handlers
from conveyor.worker.api.queues import queues_router
from conveyor.worker.api.ratelimit import AuthFailures, RateLimiter, Rates
from conveyor.worker.api.schedules import schedules_router
from conveyor.worker.api.schemas import JobBatch, JobCreate
from conveyor.worker.app import ConveyorApp
from conveyor.worker.console import install_console

DESCRIPTION = """\
Hand jobs to Conveyor over HTTP, follow them, and triage dead letters.

Every `/v1` route needs an API key (`conveyor apikey create NAME --scope ...`) sent as
`Authorization: Bearer <token>`. Scopes: `enqueue` (create and cancel jobs), `read`
(every GET), `operate` (replay and purge dead letters, pause and resume queues and
schedules, run a schedule now; implies `read`), `admin` (all of them). Each key may make a
limited number of requests per second to each kind of route (enqueue, read, admin), across
every API process (429 with `Retry-After` beyond it); an address that fails to authenticate
too often is refused for a while (429). Every error is an RFC 9457 problem document
(`application/problem+json`).
"""

EXTRA_SCHEMAS: tuple[type[BaseModel], ...] = (
    Problem,
    JobCreate,
    JobBatch,
    DeadLetterSelection,
    ReplaySelection,
)
"""Models the document names but FastAPI does not see (problem bodies, and request bodies
parsed after authentication by :func:`~worker.api.body.json_body`)."""


def _drop_fastapi_validation_errors(document: dict[str, Any]) -> None:
    """Remove the 422 FastAPI documents for every parameter: ours are 400 problems."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422", {})
            if "HTTPValidationError" in str(response.get("content")):
                del operation["responses"]["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        document["components"]["schemas"].pop(name, None)


def openapi_document(api: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus :data:`EXTRA_SCHEMAS`, minus its default 422 responses."""
    document = get_openapi(
        title=api.title, version=api.version, description=api.description, routes=api.routes
    )
    _, extra = models_json_schema(
        [(model, "validation") for model in EXTRA_SCHEMAS],
        ref_template="#/components/schemas/{model}",
    )
    document.setdefault("components", {}).setdefault("schemas", {}).update(extra.get("$defs", {}))
    _drop_fastapi_validation_errors(document)
    return document


def rates_of(settings: Settings) -> Rates:
    """Each kind of route's rate: its own setting, else ``CONVEYOR_API_RATE_LIMIT_PER_S``."""
    default = settings.api_rate_limit_per_s
    return Rates(
        enqueue_per_s=settings.api_enqueue_rate_per_s or default,
        read_per_s=settings.api_read_rate_per_s or default,
        admin_per_s=settings.api_admin_rate_per_s or default,
    )


def create_api(conveyor: ConveyorApp) -> FastAPI:
    """The HTTP API for ``conveyor``'s ledger and broker (see ``docs/api.md``)."""
    settings = conveyor.settings

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        auth.revocations.start()
        yield
        auth.revocations.stop()
        conveyor.ledger.dispose()
        conveyor.close()

    api = FastAPI(
        title="Conveyor",
        version=package_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    failures = AuthFailures(conveyor.ledger, per_min=settings.api_auth_failures_per_min)
    limiter = RateLimiter(conveyor.ledger, rates_of(settings))
    auth = Authenticator(conveyor.ledger, limiter, failures)
    routers = [
        health_router(conveyor),
        jobs_router(conveyor, auth),
        dead_letters_router(conveyor, auth),
        queues_router(conveyor, auth),
        schedules_router(conveyor, auth),
        catalog_router(conveyor, auth),
        metrics_router(conveyor, auth),
    ]
    for router in routers:
        api.include_router(router)
    install_handlers(
        api, [r for router in routers for r in router.routes if isinstance(r, APIRoute)]
    )
    install_console(api, conveyor, failures)
    api.add_middleware(BodyLimit, limit_bytes=settings.api_max_body_bytes)
    if settings.api_cors_origins:
        api.add_middleware(CORSMiddleware, **cors_options(settings.api_cors_origins))
    api.add_middleware(CatchAll)
    api.add_middleware(Hygiene)  # added last: the outermost, so its headers are on every answer

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            api.openapi_schema = openapi_document(api)
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    return api
