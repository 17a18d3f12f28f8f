"""Making sure the ledger's schema is current before anything reads or writes it."""

from __future__ import annotations

import logging

from sqlalchemy.exc import OperationalError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from conveyor.config import Settings
from conveyor.worker.errors import UsageError
from conveyor.worker.migrate import current_revision, head_revision, upgrade

log = logging.getLogger("conveyor.schema")

WAIT_MAX_S = 5.0
"""Longest pause between two tries while a starting service waits for its ledger."""


def ensure_schema(settings: Settings) -> None:
    """Migrate the embedded SQLite ledger on first use; elsewhere insist on ``conveyor migrate``.

    A shared PostgreSQL ledger is migrated deliberately, once per deploy, never as a side
    effect of a worker or a producer starting.
    """
    url = settings.database
    if settings.database_url is None:
        upgrade(url)
        return
    current, head = current_revision(url), head_revision()
    if current != head:
        raise UsageError(
            f"the ledger is at revision {current or 'none'}, this version needs {head}: "
            "run `conveyor migrate`"
        )


def wait_for_schema(settings: Settings) -> None:
    """:func:`ensure_schema`, tried again and again while the ledger cannot be reached.

    For services (worker, relay, API, Flower): one that starts while its database is down
    or restarting waits for it, as Celery waits for its broker, instead of exiting and
    leaving a supervisor to restart it. A wrong schema still fails at once.
    """

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
