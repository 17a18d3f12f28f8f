"""``/healthz`` and ``/readyz``: probes for orchestrators, without authentication; ``/metrics``.

``/healthz`` (liveness) does no I/O: it answers while the event loop turns, so a slow
database never gets the process restarted. ``/readyz`` (readiness) checks the ledger
(``SELECT 1``) and the broker (a fresh connection), each within :data:`CHECK_TIMEOUT_S`
and concurrently; if either fails, it answers 503 so traffic goes elsewhere. Neither
reveals more than which dependency failed.

``/metrics`` serves the API process's counters (jobs enqueued, replayed) and the ledger
gauges (:class:`~worker.observability.metrics.LedgerCollector`) to a caller with the metrics token
(``CONVEYOR_METRICS_TOKEN``) or an API key with the ``read`` scope.
"""

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import Any, Final

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from worker.api.auth import Authenticator, Credentials
from worker.api.keys import Scope
from worker.api.problems import ProblemError, documented
from worker.api.schemas import Health, Readiness
from worker.app import ConveyorApp
from worker.observability.metrics import registry_for_scrape
from worker.observability.probes import check_broker, check_ledger

CHECK_TIMEOUT_S: Final = 2.0

log = logging.getLogger("conveyor.api")


async def _outcome(name: str, check: Callable[[], None]) -> str:
    """``ok``, or ``failed``/``timeout`` (logged with the error type, not its message)."""
    loop = asyncio.get_running_loop()
    try:
        # On a timeout the thread is abandoned; it ends when its own connect timeout does.
        await asyncio.wait_for(loop.run_in_executor(None, check), CHECK_TIMEOUT_S)
    except TimeoutError:
        log.warning("api.not_ready", extra={"check": name, "error_type": "timeout"})
        return "timeout"
    except Exception as exc:
        log.warning("api.not_ready", extra={"check": name, "error_type": type(exc).__name__})
        return "failed"
    return "ok"


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
        ledger, broker = await asyncio.gather(
            _outcome("ledger", lambda: check_ledger(app)),
            _outcome("broker", lambda: check_broker(app)),
        )
        checks = {"ledger": ledger, "broker": broker}
        if ledger != "ok" or broker != "ok":
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
    token = app.settings.metrics_token
    read = auth.require(Scope.READ)

    async def scraper(credentials: Credentials) -> None:
        offered = credentials.credentials if credentials is not None else ""
        if token is not None and hmac.compare_digest(
            offered.encode(), token.get_secret_value().encode()
        ):
            return
        await read(credentials)

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
