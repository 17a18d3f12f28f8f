"""The console's pages: overview, queues, jobs, one job, dead letters, audit log.

Every filter is a query parameter, so a view is a URL that can be bookmarked and shared.
Bad filter values are shown back on the page with what is wrong (status 400), never a 500.
Route functions are plain ``def``: FastAPI runs them in its thread pool, beside the
synchronous ledger.
"""

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from conveyor.worker.api.pagination import Cursor, JobFilter, PayloadMatch, page
from conveyor.worker.api.problems import ProblemError
from conveyor.worker.app import ConveyorApp
from conveyor.worker.console import queries
from conveyor.worker.console.access import Role, Viewer
from conveyor.worker.console.web import Denied, Gate, render
from conveyor.worker.constants import DeadReason
from conveyor.worker.ledger.dead import DeadFilter
from conveyor.worker.models import JobState

PAGE_SIZE = 50
PAYLOAD_FILTER = re.compile(r"\s*(?:payload\.)?([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*)\s*=\s*(.+)")


class BadFilter(ValueError):
    """A filter value the page cannot use; its message is shown on the page."""


def payload_match(text: str) -> PayloadMatch:
    """``customer_id = 42`` or ``payload.order.kind = "a"``: the value is JSON if it parses
    as JSON (``42``, ``true``, ``"42"``), else the text itself."""
    found = PAYLOAD_FILTER.fullmatch(text)
    if found is None:
        raise BadFilter("a payload filter reads field = value, e.g. customer_id = 42")
    raw = found.group(2).strip()
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if isinstance(value, (dict, list)):
        raise BadFilter("a payload filter compares one field with a number, text or boolean")
    return PayloadMatch(tuple(found.group(1).split(".")), value)


def moment(text: str, name: str) -> datetime:
    """A time from a form: ISO 8601, UTC unless it names its offset."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BadFilter(f"{name}: {text!r} is not a time like 2026-12-04T10:00") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def job_filter(params: dict[str, str]) -> JobFilter:
    state = params.get("state") or None
    if state is not None and state not in set(JobState):
        raise BadFilter(f"state: {state!r} is not one of {', '.join(JobState)}")
    after, before = params.get("created_after"), params.get("created_before")
    return JobFilter(
        state=state,
        task=params.get("task") or None,
        queue=params.get("queue") or None,
        created_after=moment(after, "created after") if after else None,
        created_before=moment(before, "created before") if before else None,
        idempotency_key=params.get("idempotency_key") or None,
        payload=payload_match(params["payload"]) if params.get("payload") else None,
    )


def dead_filter(params: dict[str, str]) -> DeadFilter:
    reason = params.get("reason") or None
    if reason is not None and reason not in set(DeadReason):
        raise BadFilter(f"reason: {reason!r} is not one of {', '.join(DeadReason)}")
    return DeadFilter(
        queue=params.get("queue") or None,
        task=params.get("task") or None,
        error_type=params.get("error_type") or None,
        reason=DeadReason(reason) if reason else None,
    )


JOB_FIELDS = ("state", "task", "queue", "created_after", "created_before", "idempotency_key")
DEAD_FIELDS = ("task", "queue", "error_type", "reason")


def filled(params: dict[str, str], fields: tuple[str, ...]) -> dict[str, str]:
    """The filter fields that were given, for forms and links."""
    return {name: params[name] for name in fields if params.get(name)}


def page_cursor(text: str | None) -> Cursor | None:
    """The cursor of a "next page" link, as :class:`Cursor` reads it."""
    if not text:
        return None
    try:
        return Cursor.decode(text)
    except ProblemError as error:
        raise BadFilter(error.detail) from None


def trace_id(traceparent: str | None) -> str | None:
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def pages_router(app: ConveyorApp, gate: Gate) -> APIRouter:
    """The read-only pages; any signed-in role may open them."""
    router = APIRouter(prefix="/console", include_in_schema=False)
    Reader = Annotated[Viewer, Depends(gate.at_least(Role.VIEWER))]
    fleet = queries.FleetCache(app)

    @router.get("/", response_class=HTMLResponse)
    def overview(request: Request, viewer: Reader) -> HTMLResponse:
        return render(request, "overview.html", viewer, {"o": queries.overview(app.ledger, fleet)})

    @router.get("/fragments/overview", response_class=HTMLResponse)
    def overview_fragment(request: Request, viewer: Reader) -> HTMLResponse:
        """The overview's live part, fetched again every few seconds by console.js."""
        o = queries.overview(app.ledger, fleet)
        return render(request, "overview_live.html", viewer, {"o": o})

    @router.get("/queues", response_class=HTMLResponse)
    def queues(request: Request, viewer: Reader) -> HTMLResponse:
        o = queries.overview(app.ledger, fleet, chart=False)
        return render(request, "queues.html", viewer, {"o": o})

    router.include_router(record_pages(app, gate))
    return router


def record_pages(app: ConveyorApp, gate: Gate) -> APIRouter:
    """Jobs, one job, dead letters, the audit log."""
    router = APIRouter(include_in_schema=False)
    Reader = Annotated[Viewer, Depends(gate.at_least(Role.VIEWER))]
    trace_url = app.settings.console_trace_url

    @router.get("/jobs", response_class=HTMLResponse)
    def jobs(request: Request, viewer: Reader) -> HTMLResponse:
        return jobs_page(app, request, viewer)

    @router.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job(request: Request, job_id: str, viewer: Reader) -> HTMLResponse:
        detail = queries.job_detail(app.ledger, job_id)
        if detail is None:
            raise Denied(404, f"no job {job_id!r}", viewer=viewer)
        trace = trace_id(detail.job.traceparent)
        link = trace_url.replace("{trace_id}", trace) if trace and trace_url else None
        context = {"d": detail, "trace_id": trace, "trace_link": link}
        return render(request, "job.html", viewer, context)

    @router.get("/dead-letters", response_class=HTMLResponse)
    def dead_letters(request: Request, viewer: Reader) -> HTMLResponse:
        return dead_letters_page(app, request, viewer)

    @router.get("/audit", response_class=HTMLResponse)
    def audit(request: Request, viewer: Reader) -> HTMLResponse:
        entries = queries.audit_entries(app.ledger)
        return render(request, "audit.html", viewer, {"entries": entries})

    @router.get("/audit/{entry_id}", response_class=HTMLResponse)
    def audit_entry(request: Request, entry_id: int, viewer: Reader) -> HTMLResponse:
        progress = queries.audit_entry(app.ledger, entry_id)
        if progress is None:
            raise Denied(404, f"no audit entry {entry_id}", viewer=viewer)
        return render(request, "audit_entry.html", viewer, {"p": progress})

    @router.get("/fragments/audit/{entry_id}", response_class=HTMLResponse)
    def audit_fragment(request: Request, entry_id: int, viewer: Reader) -> HTMLResponse:
        progress = queries.audit_entry(app.ledger, entry_id)
        return render(request, "audit_progress.html", viewer, {"p": progress})

    return router


def jobs_page(app: ConveyorApp, request: Request, viewer: Viewer) -> HTMLResponse:
    """The job list: filters from the URL, newest first, a cursor to the older page."""
    params = dict(request.query_params)
    given = filled(params, (*JOB_FIELDS, "payload"))
    context: dict[str, Any] = {"f": given, "states": list(JobState), "rows": [], "next": None}
    try:
        where = job_filter(params)
        cursor = page_cursor(params.get("cursor"))
    except BadFilter as error:
        return render(
            request, "jobs.html", viewer, context | {"error": str(error)}, status_code=400
        )
    rows, following = page(app.ledger, where, cursor=cursor, limit=PAGE_SIZE)
    if following is not None:
        context["next"] = "?" + urlencode(given | {"cursor": following.encode()})
    return render(request, "jobs.html", viewer, context | {"rows": rows})


def dead_letters_page(app: ConveyorApp, request: Request, viewer: Viewer) -> HTMLResponse:
    """Dead letters grouped by task and error type, and the oldest of them."""
    params = dict(request.query_params)
    given = filled(params, DEAD_FIELDS)
    context: dict[str, Any] = {
        "f": given,
        "reasons": list(DeadReason),
        "groups": [],
        "rows": [],
    }
    try:
        where = dead_filter(params)
    except BadFilter as error:
        return render(
            request,
            "dead_letters.html",
            viewer,
            context | {"error": str(error)},
            status_code=400,
        )
    groups = queries.dead_groups(app.ledger, where)
    rows = app.ledger.dead(where, limit=PAGE_SIZE, lagging=True)
    links = {
        (g.task, g.error_type): "?"
        + urlencode(given | {"task": g.task, "error_type": g.error_type or ""})
        for g in groups
    }
    context |= {"groups": groups, "rows": rows, "links": links, "query": urlencode(given)}
    return render(request, "dead_letters.html", viewer, context)
