"""The operator console: web pages over the ledger, served by ``conveyor api`` at ``/console``.

Server-rendered (FastAPI and Jinja2), with one small script (``static/console.js``) that
refreshes the live parts and nothing else: no build step. ``docs/console.md`` shows each
page and says who may do what.

=============  ============================================================================
module         holds
=============  ============================================================================
``access``     roles, passwords, sessions (sign in, look up, sign out)
``web``        templates, the sign-in gate, CSRF, security headers
``queries``    what the pages read from the ledger, one function per question
``pages``      the read-only pages: overview, queues, jobs, job, dead letters, audit
``actions``    sign-in, bulk replay and purge, pause and resume, API keys
=============  ============================================================================
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from conveyor.worker.api.ratelimit import AuthFailures
from conveyor.worker.app import ConveyorApp
from conveyor.worker.console.access import Sessions, parse_users
from conveyor.worker.console.actions import actions_router
from conveyor.worker.console.pages import pages_router
from conveyor.worker.console.web import STATIC, ConsoleHeaders, Denied, Gate, denied_response


def install_console(api: FastAPI, conveyor: ConveyorApp, failures: AuthFailures) -> None:
    """Add the console's routes, static files, gate and headers to ``api``; failed sign-ins
    count in ``failures`` with the API's."""
    settings = conveyor.settings
    sessions = Sessions(
        conveyor.ledger,
        lifetime_s=settings.console_session_s,
        users=parse_users(settings.console_users),
    )
    gate = Gate(sessions)
    api.include_router(actions_router(conveyor, gate, sessions, failures))
    api.include_router(pages_router(conveyor, gate))
    api.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    api.add_exception_handler(Denied, denied_response)
    api.add_middleware(ConsoleHeaders)
