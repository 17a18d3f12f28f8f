"""Making sure the ledger's schema is current before anything reads or writes it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.exc import OperationalError

from conveyor.config import Settings
from conveyor.worker.errors import UsageError
from conveyor.worker.ledger import make_engine

if TYPE_CHECKING:
    from tenacity import RetryCallState

log = logging.getLogger("conveyor.schema")

HEAD_REVISION = "0012"
"""The newest migration (``worker/migrations/versions``): the revision this version needs.

Written out so that checking a ledger does not load Alembic, which costs a command line
call a third of its start-up; ``tests/unit/test_cli_imports.py`` holds it equal to
Alembic's head.
"""

WAIT_MAX_S = 5.0
"""Longest pause between two tries while a starting service waits for its ledger."""


def ensure_schema(settings: Settings) -> None:
    """Migrate the embedded SQLite ledger on first use; elsewhere insist on ``conveyor migrate``.

    A shared PostgreSQL ledger is migrated deliberately, once per deploy, never as a side
    effect of a worker or a producer starting.
    """
    url = settings.database
    current = current_revision(url)
    if current == HEAD_REVISION:
        return
    if settings.database_url is None:
        from conveyor.worker.migrate import upgrade

        upgrade(url)
        return
    raise UsageError(
        f"the ledger is at revision {current or 'none'}, this version needs {HEAD_REVISION}: "
        "run `conveyor migrate`"
    )


def current_revision(url: str) -> str | None:
    """The revision the ledger at ``url`` is at, as Alembic records it; None if unmigrated."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return None
            revision: str | None = connection.execute(
                text("SELECT version_num FROM alembic_version")
            ).scalar()
            return revision
    finally:
        engine.dispose()


def wait_for_schema(settings: Settings) -> None:
    """:func:`ensure_schema`, tried again and again while the ledger cannot be reached.

    For services (worker, relay, API, Flower): one that starts while its database is down
    or restarting waits for it, as Celery waits for its broker, instead of exiting and
    leaving a supervisor to restart it. A wrong schema still fails at once. (tenacity is
    imported here: it brings asyncio, which a one-off command has no use for.)
    """
    from tenacity import Retrying, retry_if_exception_type, wait_exponential

    def waiting(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        orig = getattr(error, "orig", error)
        pause = state.next_action.sleep if state.next_action else 0.0
        first_line = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
        log.warning("ledger.waiting", extra={"retry_in_s": round(pause, 1), "error": first_line})

    for attempt in Retrying(
        retry=retry_if_exception_type(OperationalError),
        wait=wait_exponential(multiplier=0.2, max=WAIT_MAX_S),
        before_sleep=waiting,
        reraise=True,
    ):
        with attempt:
            ensure_schema(settings)
