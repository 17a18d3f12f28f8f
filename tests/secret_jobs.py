"""A job for tests/integration/test_planted_secrets.py, loaded with
``CONVEYOR_TASK_MODULES=tests.secret_jobs``.

It fails as a library error that quotes what it was given would: its message names the
worker's broker and ledger URLs, passwords and all, the Sentry DSN, the metrics token and
Flower's password, as the worker's own settings hold them (read from ``*_FILE`` files
or variables alike). Nothing of it may reach the ledger, a log, the API or Sentry unmasked.
"""

from __future__ import annotations

from typing import Any

from conveyor import JobContext, job
from conveyor.config import load_settings


@job(name="secrets.quote_settings", max_attempts=1)
def quote_settings(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Raise an error quoting every secret of the worker's settings."""
    settings = load_settings()
    quoted = [settings.broker, settings.database]
    for secret in (settings.sentry_dsn, settings.metrics_token, settings.flower_password):
        if secret is not None:
            quoted.append(secret.get_secret_value())
    raise ConnectionError(f"cannot connect with {' or '.join(quoted)}")
