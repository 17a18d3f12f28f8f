"""What every console page shares: templates, the sign-in gate, CSRF, security headers.

- **The gate** (:class:`Gate`): a request without a live session is sent to the sign-in
  page (a page load) or refused with 401 (a form post or a fragment); a signed-in person
  without the role a route needs gets 403. The role is checked here, on the server, for
  every route: hiding a button is a courtesy, not a control.
- **CSRF**: every POST carries the session's token in a ``csrf_token`` form field
  (:meth:`Gate.posted`); the cookie is also ``SameSite=Strict``.
- **Headers** (:class:`ConsoleHeaders`): a Content-Security-Policy that admits scripts and
  styles from the console's own ``/console/static`` only (no inline script can run, so a
  payload containing ``<script>`` is text, as Jinja's escaping already makes it), no
  framing, no referrer; ``nosniff``, ``no-store`` (pages show job data) and HSTS come with
  every answer of the server (:mod:`worker.api.hygiene`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.worker.console.access import Role, Sessions, Viewer

HERE: Final = Path(__file__).parent
TEMPLATES: Final = Jinja2Templates(directory=HERE / "templates")
TEMPLATES.env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
"""A JSON document as text for a ``<pre>`` (escaped by Jinja, as everything is)."""
WHY_DEAD: Final = {
    "fatal": "the job raised a fatal error, which is never retried",
    "exhausted": "this was the last attempt its retry policy allows",
    "invalid_payload": "the payload does not match the job's schema",
    "invalid_message": "the ledger cannot store the message (its id or key)",
    "undecodable": "the message body could not be decoded",
    "not_a_task": "the message names no task",
    "unknown_task": "no worker knows the task",
    "content_type": "the message is not JSON, and other serializers are never read",
}
TEMPLATES.env.globals["why_dead"] = WHY_DEAD
STATIC: Final = HERE / "static"
COOKIE: Final = "conveyor_session"
LOGIN_COOKIE: Final = "conveyor_login_csrf"
PREFIX: Final = "/console"

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
"""The console's own headers; ``nosniff``, ``no-store`` and HSTS, which every answer of the
server carries, come from :class:`worker.api.hygiene.Hygiene`."""


class ConsoleHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every ``/console`` answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        extra = SECURITY_HEADERS

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {name.lower() for name, _ in headers}
                for name, value in extra.items():
                    if name.lower().encode() not in have:
                        headers.append((name.lower().encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


class Denied(Exception):
    """Raised by the gate; :func:`denied_response` turns it into the answer."""

    def __init__(
        self, status: int, detail: str, *, sign_in: bool = False, viewer: Viewer | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.sign_in = sign_in
        self.viewer = viewer
        """Who was refused (a 403): the page still shows their frame."""


def denied_response(request: Request, error: Exception) -> Response:
    assert isinstance(error, Denied)
    if error.sign_in and request.method == "GET" and "fragment" not in request.url.path:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/login?next={quote_next(target)}", status_code=303)
    context = {"status": error.status, "detail": error.detail}
    return render(request, "denied.html", error.viewer, context, status_code=error.status)


def quote_next(target: str) -> str:
    from urllib.parse import quote

    return quote(target, safe="")


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path, never another site."""
    if target and target.startswith(f"{PREFIX}") and "//" not in target and "\\" not in target:
        return target
    return f"{PREFIX}/"


class Gate:
    """FastAPI dependencies that admit signed-in people with at least a role."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions

    def viewer(self, request: Request) -> Viewer | None:
        return self.sessions.find(request.cookies.get(COOKIE))

    def at_least(self, role: Role) -> Callable[[Request], Viewer]:
        def admitted(request: Request) -> Viewer:
            viewer = self.viewer(request)
            if viewer is None:
                raise Denied(401, "sign in first", sign_in=True)
            if not viewer.allows(role):
                detail = f"this needs the {role.value} role; you are {viewer.role}"
                raise Denied(403, detail, viewer=viewer)
            return viewer

        return admitted

    def posted(self, role: Role) -> Callable[[Request], Any]:
        """Like :meth:`at_least`, for a form post: also checks the CSRF token."""
        gate = self.at_least(role)

        async def admitted(request: Request) -> Viewer:
            viewer = await run_in_threadpool(gate, request)  # a ledger read: off the loop
            form = await request.form()
            token = form.get("csrf_token")
            if not viewer.csrf_ok(token if isinstance(token, str) else None):
                detail = "the form's CSRF token is missing or wrong: reload the page"
                raise Denied(403, detail, viewer=viewer)
            return viewer

        return admitted


def render(
    request: Request,
    template: str,
    viewer: Viewer | None,
    context: dict[str, Any],
    *,
    status_code: int = 200,
) -> HTMLResponse:
    """A page, with what every page's frame needs (who is signed in, what they may do)."""
    frame = {
        "viewer": viewer,
        "csrf_token": viewer.csrf_token if viewer is not None else "",
        "can_operate": viewer is not None and viewer.allows(Role.OPERATOR),
        "is_admin": viewer is not None and viewer.allows(Role.ADMIN),
        "path": request.url.path,
    }
    return TEMPLATES.TemplateResponse(request, template, frame | context, status_code=status_code)
