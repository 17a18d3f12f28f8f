"""The console's actions: sign in and out, bulk replay and purge, pause and resume, API keys.

Each action is a form post that the gate admits with a role and a CSRF token
(:meth:`~worker.console.web.Gate.posted`), does its work through the same operations as
the CLI and the HTTP API (so it is audited the same way, with the signed-in actor), and
answers with a redirect (post/redirect/get: reloading never repeats an action).
"""

import logging
import secrets
from contextlib import suppress
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from conveyor.worker.api.auth import client_address
from conveyor.worker.api.keys import Scope, create_key, list_keys, revoke_key, token_prefix
from conveyor.worker.api.ratelimit import AuthFailures
from conveyor.worker.app import ConveyorApp
from conveyor.worker.console.access import Role, Sessions, Viewer
from conveyor.worker.console.pages import DEAD_FIELDS, BadFilter, dead_filter, filled
from conveyor.worker.console.web import (
    COOKIE,
    LOGIN_COOKIE,
    PREFIX,
    Denied,
    Gate,
    render,
    safe_next,
)
from conveyor.worker.errors import UsageError
from conveyor.worker.operations import dlq

log = logging.getLogger("conveyor.console")

PREVIEW_IDS = 100
"""Dead letters a preview lists by id (it counts all of them)."""
MAX_RATE_PER_S = 10_000.0


def back(path: str, **params: str) -> RedirectResponse:
    query = f"?{urlencode(params)}" if params else ""
    return RedirectResponse(f"{PREFIX}{path}{query}", status_code=303)


def set_cookie(
    response: Response,
    request: Request,
    name: str,
    value: str,
    *,
    path: str,
    max_age: float | None = None,
) -> None:
    """A console cookie: HttpOnly, SameSite=Strict, Secure when the request came over TLS."""
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        path=path,
        secure=request.url.scheme == "https",
        max_age=int(max_age) if max_age is not None else None,
    )


def actions_router(
    app: ConveyorApp, gate: Gate, sessions: Sessions, failures: AuthFailures
) -> APIRouter:
    """Every action, under ``/console``: signing in and out here, the rest below. Failed
    sign-ins count against the client's address with the API's (:mod:`worker.api.ratelimit`)."""
    router = APIRouter(prefix="/console", include_in_schema=False)
    PostedViewer = Annotated[Viewer, Depends(gate.posted(Role.VIEWER))]

    def login_form(
        request: Request, next_path: str | None, *, error: str | None = None, status: int = 401
    ) -> HTMLResponse:
        """The sign-in page, with a fresh token for its form in a cookie of its own."""
        token = secrets.token_urlsafe(32)
        context = {
            "login_csrf": token,
            "next": safe_next(next_path),
            "error": error,
            "users": bool(sessions.users),
        }
        response = render(
            request, "login.html", None, context, status_code=status if error else 200
        )
        set_cookie(response, request, LOGIN_COOKIE, token, path=f"{PREFIX}/login")
        return response

    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str | None = None) -> HTMLResponse:
        return login_form(request, next)

    @router.post("/login", response_class=HTMLResponse)
    def login(
        request: Request,
        csrf_token: Annotated[str, Form(max_length=100)] = "",
        api_key: Annotated[str, Form(max_length=300)] = "",
        username: Annotated[str, Form(max_length=100)] = "",
        password: Annotated[str, Form(max_length=1000)] = "",
        next: Annotated[str, Form(max_length=2000)] = "",
    ) -> Response:
        """Sign in with an API key, or a name and password; a session cookie comes back."""
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not secrets.compare_digest(csrf_token, expected):
            return login_form(request, next, error="the sign-in form expired: try again")
        if not api_key and not username:
            return login_form(request, next, error="give an API key, or a name and password")
        address = client_address(request)
        if failures.wait_s(address) > 0:
            error = "too many failed sign-ins from this address: try again in a minute"
            return login_form(request, next, error=error, status=429)
        if api_key:
            token = sessions.with_key(api_key.strip())
        else:
            token = sessions.with_password(username, password)
        if token is None:
            who = {"key_prefix": token_prefix(api_key.strip())} if api_key else {"user": username}
            log.warning("console.sign_in_failed", extra={"client": address, **who})
            failures.failed(address)
            return login_form(request, next, error="those credentials do not open the console")
        response = RedirectResponse(safe_next(next), status_code=303)
        set_cookie(response, request, COOKIE, token, path=PREFIX, max_age=sessions.lifetime_s)
        response.delete_cookie(LOGIN_COOKIE, path=f"{PREFIX}/login")
        return response

    @router.post("/logout")
    def logout(viewer: PostedViewer) -> Response:
        sessions.end(viewer)
        response = back("/login")
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    router.include_router(triage_router(app, gate))
    router.include_router(keys_router(app, gate))
    return router


def triage_router(app: ConveyorApp, gate: Gate) -> APIRouter:
    """Bulk replay and purge of dead letters after a preview; pausing and resuming queues."""
    router = APIRouter(include_in_schema=False)
    Operator = Annotated[Viewer, Depends(gate.at_least(Role.OPERATOR))]
    PostedOperator = Annotated[Viewer, Depends(gate.posted(Role.OPERATOR))]

    @router.get("/dead-letters/preview", response_class=HTMLResponse)
    def preview(request: Request, viewer: Operator, action: str = "replay") -> HTMLResponse:
        """What a replay or purge of the filter would take, before anything is done."""
        params = dict(request.query_params)
        given = filled(params, DEAD_FIELDS)
        if action not in ("replay", "purge"):
            raise Denied(400, "the action is replay or purge", viewer=viewer)
        try:
            where = dead_filter(params)
        except BadFilter as error:
            raise Denied(400, str(error), viewer=viewer) from None
        act = dlq.replay if action == "replay" else dlq.purge
        outcome = act(app, where, actor=viewer.actor, dry_run=True)
        context = {
            "action": action,
            "f": given,
            "outcome": outcome,
            "shown": outcome.job_ids[:PREVIEW_IDS],
        }
        return render(request, "preview.html", viewer, context)

    @router.post("/dead-letters/replay")
    def replay(
        viewer: PostedOperator,
        expected: Annotated[int, Form(ge=0)],
        where: Posted,
        rate_per_s: Annotated[float | None, Form(gt=0, le=MAX_RATE_PER_S)] = None,
    ) -> Response:
        """Replay what the filter matches, at most the ``expected`` letters the preview
        counted (oldest first: letters that died since the preview wait for the next)."""
        outcome = dlq.replay(app, where, actor=viewer.actor, rate_per_s=rate_per_s, limit=expected)
        return back(f"/audit/{outcome.audit_id}")  # a replay always writes its audit entry

    @router.post("/dead-letters/purge")
    def purge(
        viewer: PostedOperator,
        expected: Annotated[int, Form(ge=0)],
        where: Posted,
    ) -> Response:
        """Purge what the filter matches, at most the ``expected`` letters the preview counted."""
        dlq.purge(app, where, actor=viewer.actor, limit=expected)
        return back("/audit")

    @router.post("/queues/{queue}/pause")
    def pause(queue: str, viewer: PostedOperator) -> Response:
        app.ledger.pause(queue, actor=viewer.actor, reason="paused in the console")
        return back("/queues")

    @router.post("/queues/{queue}/resume")
    def resume(queue: str, viewer: PostedOperator) -> Response:
        app.ledger.resume(queue, actor=viewer.actor)
        return back("/queues")

    return router


def keys_router(app: ConveyorApp, gate: Gate) -> APIRouter:
    """API keys: list, create (the token is shown once), revoke."""
    router = APIRouter(include_in_schema=False)
    Admin = Annotated[Viewer, Depends(gate.at_least(Role.ADMIN))]
    PostedAdmin = Annotated[Viewer, Depends(gate.posted(Role.ADMIN))]

    @router.get("/keys", response_class=HTMLResponse)
    def keys(request: Request, viewer: Admin) -> HTMLResponse:
        return render(
            request, "keys.html", viewer, {"keys": list_keys(app.ledger), "scopes": list(Scope)}
        )

    @router.post("/keys", response_class=HTMLResponse)
    def create(
        request: Request,
        viewer: PostedAdmin,
        name: Annotated[str, Form(max_length=100)] = "",
        scope: Annotated[list[str] | None, Form()] = None,
    ) -> Response:
        """Create an API key and show its token, once."""
        scopes = [Scope(s) for s in scope or [] if s in set(Scope)]
        context: dict[str, Any] = {"keys": [], "scopes": list(Scope)}
        try:
            _, token = create_key(app.ledger, name, scopes, actor=viewer.actor)
        except UsageError as error:
            context |= {"keys": list_keys(app.ledger), "error": str(error)}
            return render(request, "keys.html", viewer, context, status_code=400)
        context |= {"keys": list_keys(app.ledger), "created": (name, token)}
        return render(request, "keys.html", viewer, context)

    @router.post("/keys/{name}/revoke")
    def revoke(name: str, viewer: PostedAdmin) -> Response:
        with suppress(UsageError):  # revoked before, or never there: the list shows which
            revoke_key(app.ledger, name, actor=viewer.actor)
        return back("/keys")

    return router


def posted_filter(
    task: Annotated[str, Form(max_length=200)] = "",
    queue: Annotated[str, Form(max_length=200)] = "",
    error_type: Annotated[str, Form(max_length=255)] = "",
    reason: Annotated[str, Form(max_length=32)] = "",
) -> dlq.DeadFilter:
    """The dead-letter filter a preview's form posts back (its hidden fields)."""
    fields = {"task": task, "queue": queue, "error_type": error_type, "reason": reason}
    try:
        return dead_filter({name: value for name, value in fields.items() if value})
    except BadFilter as error:
        raise Denied(400, str(error)) from None


Posted = Annotated[dlq.DeadFilter, Depends(posted_filter)]
