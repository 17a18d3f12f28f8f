"""``/v1/queues``: per-queue depth and age, and the relay's lag, read from the ledger.

The ledger, not the broker, answers: it knows what is queued, running, scheduled and
dead on every broker alike, and one grouped query covers every queue.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from conveyor.worker.api.auth import Authenticator
from conveyor.worker.api.keys import Principal, Scope
from conveyor.worker.api.problems import AUTHENTICATED, documented
from conveyor.worker.api.schemas import QueuesView
from conveyor.worker.app import ConveyorApp
from conveyor.worker.operations.stats import queue_stats


def queues_router(app: ConveyorApp, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/v1/queues", tags=["queues"])
    Reader = Annotated[Principal, Depends(auth.require(Scope.READ))]

    @router.get(
        "",
        summary="Queue depths, ages and the relay's lag",
        response_model=QueuesView,
        responses=documented(*AUTHENTICATED),
    )
    def list_queues(_who: Reader) -> dict[str, Any]:
        """Every queue with a job that is queued, running, scheduled or dead (and not yet
        replayed), alphabetically."""
        return queue_stats(app.ledger)

    return router
