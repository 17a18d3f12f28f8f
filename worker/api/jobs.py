"""``/v1/jobs``: enqueue, look up, list and cancel jobs.

Route functions that touch the ledger or the broker are plain ``def``: FastAPI runs them
in its thread pool, next to the synchronous client (:mod:`worker.client`) they call.
Route modules evaluate their annotations eagerly (no ``from __future__ import
annotations``): FastAPI reads the dependency aliases defined inside the router factory.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Response

from conveyor.worker.api.auth import Authenticator
from conveyor.worker.api.body import json_body, request_body
from conveyor.worker.api.keys import Principal, Scope
from conveyor.worker.api.pagination import Cursor, JobFilter, page
from conveyor.worker.api.problems import (
    AUTHENTICATED,
    ProblemError,
    documented,
    problem_body,
    translate,
)
from conveyor.worker.api.schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    NO_NUL,
    BatchAccepted,
    JobAccepted,
    JobBatch,
    JobCreate,
    JobPage,
    JobView,
    Text,
    UtcDatetime,
)
from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import Enqueued, cancel, enqueue, enqueue_many, get_job
from conveyor.worker.models import JobState
from conveyor.worker.operations.views import job_view

JobId = Annotated[str, Path(pattern=NO_NUL, description="The job's id.")]


def jobs_router(app: ConveyorApp, auth: Authenticator) -> APIRouter:
    """The job routes, bound to ``app``'s ledger and broker."""
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
    Enqueuer = Annotated[Principal, Depends(auth.require(Scope.ENQUEUE))]
    Reader = Annotated[Principal, Depends(auth.require(Scope.READ))]

    @router.post(
        "",
        status_code=202,
        summary="Enqueue a job",
        response_model=JobAccepted,
        responses=documented(400, 409, 413, 415, 422, *AUTHENTICATED),
        openapi_extra=request_body(JobCreate),
    )
    def create_job(
        response: Response,
        _who: Enqueuer,
        body: Annotated[JobCreate, Depends(json_body(JobCreate))],
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                max_length=255,
                pattern=IDEMPOTENCY_KEY_PATTERN,
                description="Enqueue at most once per key: a retry with the same key, task "
                "and payload answers with the same job; another task or payload is a 409.",
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Validate the job, write it to the ledger and publish it (a delayed job waits in
        the ledger for the relay). Answers 202 with the job's id and a `Location` header."""
        job_id = enqueue(
            body.task,
            body.payload,
            idempotency_key=idempotency_key,
            queue=body.queue,
            delay=body.delay_s,
            priority=body.priority,
            expires_in=body.expires_in_s,
            expires_at=body.expires_at,
            app=app,
        )
        state = JobState.SCHEDULED if body.delay_s else JobState.QUEUED
        if idempotency_key is not None:
            # The key may have named an existing job (enqueue refused another request's).
            job = app.ledger.get(job_id)
            if job is not None:
                state = JobState(job.state)
        response.headers["Location"] = f"/v1/jobs/{job_id}"
        return {"id": job_id, "state": state}

    @router.post(
        ":batch",
        summary="Enqueue many jobs at once",
        response_model=BatchAccepted,
        responses=documented(400, 413, 415, 422, *AUTHENTICATED),
        openapi_extra=request_body(JobBatch),
    )
    def create_jobs(
        _who: Enqueuer, body: Annotated[JobBatch, Depends(json_body(JobBatch))]
    ) -> dict[str, Any]:
        """Up to `CONVEYOR_API_MAX_BATCH` jobs (500 by default; more is a 413), written in
        one statement and published with one wait for the broker. Each job gets what
        `POST /v1/jobs` would give it alone: an item with 202 and the job's id and state,
        or the status and problem it would have answered
        (unknown task, invalid payload, reused key, broker down); one refused job does
        not stop the others. A body that is not a batch at all is a 422, and nothing of it
        is enqueued."""
        limit = app.settings.api_max_batch
        if len(body.jobs) > limit:
            raise ProblemError(
                413,
                f"the batch has {len(body.jobs)} jobs; the limit is {limit}",
                kind="batch-too-large",
                title="Batch too large",
            )
        results = enqueue_many([job.request() for job in body.jobs], app=app)
        items = [
            batch_item(app, result, job.delay_s)
            for result, job in zip(results, body.jobs, strict=True)
        ]
        accepted = sum(1 for item in items if item["status"] == 202)
        return {"accepted": accepted, "refused": len(items) - accepted, "items": items}

    @router.get(
        "",
        summary="List jobs, newest first",
        response_model=JobPage,
        responses=documented(400, *AUTHENTICATED),
    )
    def list_jobs(
        _who: Reader,
        state: JobState | None = None,
        task: Annotated[Text | None, Query()] = None,
        queue: Annotated[Text | None, Query()] = None,
        created_after: Annotated[UtcDatetime | None, Query(description="Exclusive.")] = None,
        created_before: Annotated[UtcDatetime | None, Query(description="Exclusive.")] = None,
        cursor: Annotated[
            str | None, Query(max_length=512, description="`next_cursor` of the previous page.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        """Filter by state, task, queue and creation time; page with `cursor`. Pages are
        stable while jobs are being added: no job is repeated or skipped."""
        where = JobFilter(state, task, queue, created_after, created_before)
        after = Cursor.decode(cursor) if cursor is not None else None
        rows, following = page(app.ledger, where, cursor=after, limit=limit)
        return {
            "items": [job_view(row) for row in rows],
            "next_cursor": following.encode() if following is not None else None,
        }

    @router.get(
        "/{job_id}",
        summary="Get a job",
        response_model=JobView,
        responses=documented(400, 404, *AUTHENTICATED),
    )
    def show_job(job_id: JobId, _who: Reader) -> dict[str, Any]:
        return job_view(get_job(job_id, app=app))

    @router.post(
        "/{job_id}/cancel",
        summary="Cancel a job that has not started",
        response_model=JobView,
        responses=documented(400, 404, 409, *AUTHENTICATED),
    )
    def cancel_job(job_id: JobId, _who: Enqueuer) -> dict[str, Any]:
        """A `queued` or `scheduled` job becomes `cancelled` and never runs. A running job
        is not interrupted and a finished one is left alone: both are a 409."""
        if not cancel(job_id, app=app):  # raises JobNotFound: 404
            state = get_job(job_id, app=app).state
            raise ProblemError(
                409,
                f"job {job_id} is {state}; only queued or scheduled jobs can be cancelled",
                kind="not-cancellable",
                title="Job cannot be cancelled",
                extensions={"state": state},
            )
        return job_view(get_job(job_id, app=app))

    return router


def batch_item(app: ConveyorApp, result: Enqueued, delay_s: float | None) -> dict[str, Any]:
    """One job's item of a batch's answer (:class:`~worker.api.schemas.BatchItem`)."""
    if result.error is not None:
        problem = translate(result.error)
        if problem is None:  # every error enqueue_many reports has an answer
            raise result.error
        return {"status": problem.status, "problem": problem_body(problem)}
    state = JobState.SCHEDULED if delay_s else JobState.QUEUED
    if not result.created and result.id is not None:
        existing = app.ledger.get(result.id)  # the key named an existing job
        state = JobState(existing.state) if existing is not None else state
    return {"status": 202, "id": result.id, "state": state}
