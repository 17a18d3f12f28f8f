"""``/healthz`` and ``/readyz``: probes for orchestrators, without authentication; ``/metrics``.

``/healthz`` (liveness) does no I/O: it answers while the event loop turns, so a slow
database never gets the process restarted. ``/readyz`` (readiness) checks the ledger
(``SELECT 1``) and the broker (a fresh connection), each within two seconds and
concurrently (:func:`worker.observability.probes.readiness_checks`, the check every
process shares); if either fails, it answers 503 so traffic goes elsewhere. Neither
reveals more than which dependency failed.

``/metrics`` serves the API process's counters (jobs enqueued, replayed) and the ledger
gauges (:class:`~worker.observability.metrics.LedgerCollector`) to a caller with the metrics token
(``CONVEYOR_METRICS_TOKEN``) or an API key with the ``read`` scope.
"""

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from conveyor.worker.api.auth import Authenticator, Credentials
from conveyor.worker.api.keys import Scope
from conveyor.worker.api.problems import ProblemError, documented
from conveyor.worker.api.schemas import Health, Readiness
from conveyor.worker.app import ConveyorApp
from conveyor.worker.observability.metrics import registry_for_scrape
from conveyor.worker.observability.probes import readiness_checks, token_matches

log = logging.getLogger("conveyor.api")


def health_router(app: ConveyorApp) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Liveness", response_model=Health)
    async def healthz() -> dict[str, Any]:
        """Answers while the process serves requests; checks nothing else."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Readiness: ledger and broker reachable",
        response_model=Readiness,
        responses=documented(503),
    )
    async def readyz() -> dict[str, Any]:
        outcomes = await run_in_threadpool(readiness_checks, app, event="api.not_ready")
        checks = {check.name: check.outcome for check in outcomes}
        if any(outcome != "ok" for outcome in checks.values()):
            failing = ", ".join(name for name, result in checks.items() if result != "ok")
            raise ProblemError(
                503,
                f"not ready: {failing} unreachable",
                kind="not-ready",
                title="Not ready",
                extensions={"checks": checks},
            )
        return {"status": "ready", "checks": checks}

    return router


def metrics_router(app: ConveyorApp, auth: Authenticator) -> APIRouter:
    router = APIRouter(tags=["health"])
    registry = registry_for_scrape(app.ledger)
    secret = app.settings.metrics_token
    token = secret.get_secret_value() if secret is not None else None
    read = auth.require(Scope.READ)

    async def scraper(request: Request, credentials: Credentials) -> None:
        offered = credentials.credentials if credentials is not None else ""
        if token_matches(token, offered):
            return
        await read(request, credentials)

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        dependencies=[Depends(scraper)],
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **documented(401, 403)},
    )
    async def metrics() -> Response:
        """Counters of this API process and the ledger's queue gauges (Prometheus text)."""
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
