"""``/v1/queues``: per-queue depth, age and pause, the relay's lag; pausing and resuming.

The ledger, not the broker, answers: it knows what is queued, running, scheduled and
dead on every broker alike, and one grouped query covers every queue. Pausing and
resuming need the ``operate`` scope (or ``admin``) and are audited with the key's name as
the actor, as ``conveyor queues pause`` and ``resume`` are (:mod:`worker.pauses` says what
a pause does).
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from conveyor.worker.api.auth import Authenticator
from conveyor.worker.api.keys import Principal, Scope
from conveyor.worker.api.problems import AUTHENTICATED, documented
from conveyor.worker.api.schemas import NO_NUL, PauseView, QueuesView
from conveyor.worker.app import ConveyorApp
from conveyor.worker.operations.stats import queue_stats

QueueName = Annotated[
    str, Path(min_length=1, max_length=200, pattern=NO_NUL, description="The queue's name.")
]


def queues_router(app: ConveyorApp, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/v1/queues", tags=["queues"])
    Reader = Annotated[Principal, Depends(auth.require(Scope.READ))]
    Operator = Annotated[Principal, Depends(auth.require(Scope.OPERATE))]

    @router.get(
        "",
        summary="Queue depths, ages, pauses and the relay's lag",
        response_model=QueuesView,
        responses=documented(*AUTHENTICATED),
    )
    def list_queues(_who: Reader) -> dict[str, Any]:
        """Every queue with a job that is queued, running, scheduled or dead (and not yet
        replayed), and every paused queue, alphabetically."""
        return queue_stats(app.ledger)

    @router.post(
        "/{queue}/pause",
        summary="Pause a queue on every worker",
        response_model=PauseView,
        responses=documented(400, *AUTHENTICATED),
    )
    def pause(
        queue: QueueName,
        who: Operator,
        reason: Annotated[str | None, Query(max_length=500, pattern=NO_NUL)] = None,
    ) -> dict[str, Any]:
        """Running jobs finish; no worker starts a job of the queue (workers started later
        included) until it is resumed. Its jobs stay queued. Takes effect within a second."""
        changed = app.ledger.pause(queue, actor=who.actor, reason=reason)
        return {"queue": queue, "paused": True, "changed": changed}

    @router.post(
        "/{queue}/resume",
        summary="Resume a paused queue",
        response_model=PauseView,
        responses=documented(400, *AUTHENTICATED),
    )
    def resume(queue: QueueName, who: Operator) -> dict[str, Any]:
        """Workers that consume the queue start its waiting jobs again."""
        changed = app.ledger.resume(queue, actor=who.actor)
        return {"queue": queue, "paused": False, "changed": changed}

    return router
