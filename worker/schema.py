"""Making sure the ledger's schema is current before anything reads or writes it."""

from __future__ import annotations

from config import Settings
from worker.errors import UsageError
from worker.migrate import current_revision, head_revision, upgrade


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
