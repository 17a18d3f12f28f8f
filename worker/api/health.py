"""``/healthz`` and ``/readyz``: probes for orchestrators, without authentication.

``/healthz`` (liveness) does no I/O: it answers while the event loop turns, so a slow
database never gets the process restarted. ``/readyz`` (readiness) checks the ledger
(``SELECT 1``) and the broker (a fresh connection), each within :data:`CHECK_TIMEOUT_S`
and concurrently; if either fails, it answers 503 so traffic goes elsewhere. Neither
reveals more than which dependency failed.
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from fastapi import APIRouter
from sqlalchemy import text

from worker.api.problems import ProblemError, documented
from worker.api.schemas import Health, Readiness
from worker.app import ConveyorApp

CHECK_TIMEOUT_S: Final = 2.0

log = logging.getLogger("conveyor.api")


def check_ledger(app: ConveyorApp) -> None:
    with app.ledger.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def check_broker(app: ConveyorApp) -> None:
    with app.connection_for_write(connect_timeout=CHECK_TIMEOUT_S) as connection:
        connection.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0, timeout=CHECK_TIMEOUT_S
        )


async def _outcome(name: str, check: Callable[[], None]) -> str:
    """``ok``, or ``failed``/``timeout`` (logged with the error type, not its message)."""
    loop = asyncio.get_running_loop()
    try:
        # On a timeout the thread is abandoned; it ends when its own connect timeout does.
        await asyncio.wait_for(loop.run_in_executor(None, check), CHECK_TIMEOUT_S)
    except TimeoutError:
        log.warning("api.not_ready check=%s error_type=timeout", name)
        return "timeout"
    except Exception as exc:
        log.warning("api.not_ready check=%s error_type=%s", name, type(exc).__name__)
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
