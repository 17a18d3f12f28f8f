"""Schema migrations of the ledger, applied by ``conveyor migrate``.

Alembic keeps the applied revision in the database, so running the migrations again is
a no-op: deploys run ``conveyor migrate`` every time, before workers start.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from conveyor.worker.schema import current_revision

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def upgrade(url: str) -> tuple[str | None, str]:
    """Bring the ledger at ``url`` to the newest revision; returns ``(before, after)``."""
    before = current_revision(url)
    command.upgrade(alembic_config(url), "head")
    return before, head_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("unused")).get_current_head()
    assert head is not None
    return head
