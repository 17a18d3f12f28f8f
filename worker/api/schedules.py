"""``/v1/schedules``: periodic jobs' last and next ticks; pausing, resuming, running now.

Reading needs the ``read`` scope; pausing, resuming and running one now need ``operate``
(or ``admin``) and are audited with the key's name as the actor, as ``conveyor schedules``
is. A name no relay has synced answers 404. What the ticks mean: docs/jobs.md, "Periodic
jobs".
"""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field

from conveyor.worker.api.auth import Authenticator
from conveyor.worker.api.keys import Principal, Scope
from conveyor.worker.api.problems import AUTHENTICATED, ProblemError, documented
from conveyor.worker.api.schemas import NO_NUL
from conveyor.worker.app import ConveyorApp
from conveyor.worker.ledger.schedules import ScheduleView as Synced
from conveyor.worker.operations.schedules import run_now, schedule_views

ScheduleName = Annotated[
    str, Path(min_length=1, max_length=200, pattern=NO_NUL, description="The schedule's name.")
]


class ScheduleView(BaseModel):
    name: str = Field(examples=["reports.nightly"])
    task: str = Field(examples=["reports.build"])
    queue: str | None
    schedule: str = Field(
        description="When it ticks, and its policies.",
        examples=["cron 0 3 * * * Europe/Berlin catch_up=once overlap=skip grace=60s"],
    )
    payload: dict[str, Any]
    paused: bool
    last_tick_at: datetime | None = Field(description="The latest tick handled.")
    last_outcome: str | None = Field(
        description="enqueued, duplicate, skipped_overlap, missed, paused or manual."
    )
    last_job_id: str | None
    last_job_state: str | None
    next_tick_at: datetime | None
    synced_at: datetime = Field(description="When a relay last wrote the definition.")


class SchedulesView(BaseModel):
    schedules: list[ScheduleView]


class SchedulePauseView(BaseModel):
    schedule: str
    paused: bool = Field(description="Whether the schedule is paused now.")
    changed: bool = Field(description="False when it was paused (or not paused) already.")


class ScheduleRunView(BaseModel):
    schedule: str
    job_id: str = Field(description="The job enqueued now.")


def _unknown(name: str) -> ProblemError:
    return ProblemError(404, f"no schedule {name!r}")


def schedules_router(app: ConveyorApp, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/v1/schedules", tags=["schedules"])
    Reader = Annotated[Principal, Depends(auth.require(Scope.READ))]
    Operator = Annotated[Principal, Depends(auth.require(Scope.OPERATE))]

    @router.get(
        "",
        summary="Periodic jobs with their last and next ticks",
        response_model=SchedulesView,
        responses=documented(*AUTHENTICATED),
    )
    def list_schedules(_who: Reader) -> dict[str, Any]:
        """Every schedule the relays have synced, by name."""
        return {"schedules": schedule_views(app)}

    def paused(name: str, who: Principal, *, pause: bool) -> dict[str, Any]:
        change = app.ledger.pause_schedule if pause else app.ledger.resume_schedule
        changed = change(name, actor=who.actor)
        if changed is None:
            raise _unknown(name)
        return {"schedule": name, "paused": pause, "changed": changed}

    @router.post(
        "/{name}/pause",
        summary="Pause a schedule",
        response_model=SchedulePauseView,
        responses=documented(400, 404, *AUTHENTICATED),
    )
    def pause(name: ScheduleName, who: Operator) -> dict[str, Any]:
        """Its ticks enqueue nothing until it is resumed."""
        return paused(name, who, pause=True)

    @router.post(
        "/{name}/resume",
        summary="Resume a paused schedule",
        response_model=SchedulePauseView,
        responses=documented(400, 404, *AUTHENTICATED),
    )
    def resume(name: ScheduleName, who: Operator) -> dict[str, Any]:
        """It ticks again from now on; ticks missed while paused never run."""
        return paused(name, who, pause=False)

    @router.post(
        "/{name}/run",
        summary="Run a schedule's job now",
        response_model=ScheduleRunView,
        responses=documented(400, 404, *AUTHENTICATED),
    )
    def run(name: ScheduleName, who: Operator) -> dict[str, Any]:
        """Enqueue one job of the schedule now, besides its ticks."""
        view: Synced | None = app.ledger.schedule(name)
        if view is None:
            raise _unknown(name)
        return {"schedule": name, "job_id": run_now(app, view, actor=who.actor)}

    return router
