"""``/v1/dead-letters``: triage dead jobs over HTTP, as ``conveyor dlq`` does.

Listing and reading need the ``read`` scope; replay and purge need ``operate`` (or
``admin``) and are audited with the key's name as the actor (``apikey:<name>``). The work
itself is :mod:`worker.operations.dlq`'s: replay puts new jobs on the original queues
through the relay, purge deletes for good, both remove the broker-side copies.
"""

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from conveyor.worker.api.auth import Authenticator
from conveyor.worker.api.body import json_body, request_body
from conveyor.worker.api.dead_letter_schemas import (
    DeadLetterList,
    DeadLetterSelection,
    DeadLetterView,
    Outcome,
    ReplaySelection,
)
from conveyor.worker.api.keys import Principal, Scope
from conveyor.worker.api.problems import AUTHENTICATED, ProblemError, documented
from conveyor.worker.api.schemas import NO_NUL, Text, UtcDatetime
from conveyor.worker.app import ConveyorApp
from conveyor.worker.constants import DeadReason
from conveyor.worker.operations.dlq import DeadFilter, dead_letter_view, list_dead, purge, replay
from conveyor.worker.operations.dlq import Outcome as DlqOutcome

DeadId = Annotated[str, Path(pattern=NO_NUL, description="The dead job's id.")]
BODY = (400, 413, 415, 422)


def outcome_view(outcome: DlqOutcome) -> dict[str, Any]:
    return {**asdict(outcome), "count": outcome.count}


def selected(selection: DeadLetterSelection) -> DeadFilter:
    """The selection as a filter; an empty one must say ``"all": true`` (else a 422)."""
    where = DeadFilter(
        ids=tuple(selection.ids),
        queue=selection.queue,
        task=selection.task,
        error_type=selection.error_type,
        reason=selection.reason,
        since=selection.since,
        until=selection.until,
    )
    if where == DeadFilter() and not selection.every:
        raise ProblemError(
            422,
            'name ids, give a filter, or send "all": true to select every dead letter',
            kind="empty-filter",
            title="Empty filter",
        )
    return where


def dead_letters_router(app: ConveyorApp, auth: Authenticator) -> APIRouter:
    """The dead-letter routes, bound to ``app``'s ledger and broker."""
    router = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"])
    Reader = Annotated[Principal, Depends(auth.require(Scope.READ))]
    Operator = Annotated[Principal, Depends(auth.require(Scope.OPERATE))]

    @router.get(
        "",
        summary="List dead letters, oldest death first",
        response_model=DeadLetterList,
        responses=documented(400, *AUTHENTICATED),
    )
    def list_dead_letters(
        _who: Reader,
        queue: Annotated[Text | None, Query()] = None,
        task: Annotated[Text | None, Query()] = None,
        error_type: Annotated[Text | None, Query(description="module.QualName")] = None,
        reason: Annotated[DeadReason | None, Query(description="Why it was dead-lettered.")] = None,
        since: Annotated[UtcDatetime | None, Query(description="Dead at or after.")] = None,
        until: Annotated[UtcDatetime | None, Query(description="Dead before.")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """Dead jobs not yet replayed, without tracebacks (get one letter for that)."""
        where = DeadFilter(
            queue=queue, task=task, error_type=error_type, reason=reason, since=since, until=until
        )
        return {
            "items": [
                dead_letter_view(job) for job in list_dead(app, where, limit=limit, lagging=True)
            ]
        }

    @router.get(
        "/{job_id}",
        summary="Get a dead letter with its traceback",
        response_model=DeadLetterView,
        responses=documented(400, 404, *AUTHENTICATED),
    )
    def show_dead_letter(job_id: DeadId, _who: Reader) -> dict[str, Any]:
        found = list_dead(app, DeadFilter(ids=(job_id,)), limit=1)
        if not found:
            raise ProblemError(404, f"no dead letter with id {job_id!r}")
        return dead_letter_view(found[0], traceback=True)

    @router.post(
        "/{job_id}/replay",
        summary="Replay one dead letter",
        response_model=Outcome,
        responses=documented(400, 404, 409, 422, *AUTHENTICATED),
    )
    def replay_one(job_id: DeadId, who: Operator) -> dict[str, Any]:
        """Put the dead job back on its queue as a new job (attempts from zero) with the
        same task, payload and idempotency key; `new_ids` has the new job's id."""
        outcome = replay(app, DeadFilter(ids=(job_id,)), actor=who.actor)
        if outcome.count:
            return outcome_view(outcome)
        if job_id in outcome.skipped:
            raise ProblemError(
                422, outcome.skipped[job_id], kind="unknown-task", title="Unknown task"
            )
        job = app.ledger.get(job_id)
        if job is not None and job.replayed_as is not None:
            raise ProblemError(
                409,
                f"dead letter {job_id} was replayed already, as {job.replayed_as}",
                kind="already-replayed",
                title="Already replayed",
            )
        raise ProblemError(404, f"no dead letter with id {job_id!r}")

    @router.post(
        "/replay",
        summary="Replay dead letters by filter",
        response_model=Outcome,
        responses=documented(*BODY, *AUTHENTICATED),
        openapi_extra=request_body(ReplaySelection),
    )
    def replay_many(
        who: Operator, body: Annotated[ReplaySelection, Depends(json_body(ReplaySelection))]
    ) -> dict[str, Any]:
        """Every matching dead letter becomes a new job on its queue; `dry_run` only
        counts. Jobs whose task this server does not know are skipped and listed."""
        outcome = replay(
            app,
            selected(body),
            actor=who.actor,
            dry_run=body.dry_run,
            rate_per_s=body.rate_per_s,
        )
        return outcome_view(outcome)

    @router.post(
        "/purge",
        summary="Purge dead letters by filter",
        response_model=Outcome,
        responses=documented(*BODY, *AUTHENTICATED),
        openapi_extra=request_body(DeadLetterSelection),
    )
    def purge_many(
        who: Operator,
        body: Annotated[DeadLetterSelection, Depends(json_body(DeadLetterSelection))],
    ) -> dict[str, Any]:
        """Delete matching dead jobs for good, from the ledger and the broker's dead-letter
        queues; `dry_run` only counts."""
        return outcome_view(purge(app, selected(body), actor=who.actor, dry_run=body.dry_run))

    return router
