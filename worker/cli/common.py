"""What every ``conveyor`` command shares: lazily built settings and app, JSON output, failure.

Light on purpose: every command module imports it, and ``conveyor --help`` may import it
too, so the settings, the app and Sentry are imported when a command first asks for them.
"""

from __future__ import annotations

import json
import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from conveyor.config import Settings
    from conveyor.worker.app import ConveyorApp
    from conveyor.worker.ledger import Ledger

EXIT_ERROR = 1


class State:
    """What commands share: settings and app, built only when a command needs them."""

    @cached_property
    def settings(self) -> Settings:
        from conveyor.config import load_settings
        from conveyor.worker.observability.masking import protect

        settings = load_settings()
        protect(settings)  # from here on, nothing this process shows holds its secrets
        return settings

    waits_for_ledger = False
    """Set by services (worker, relay, API, Flower): wait for the ledger instead of failing."""

    @cached_property
    def ledger(self) -> Ledger:
        """The ledger alone, for commands that only read or write it (no Celery app)."""
        from conveyor.worker.ledger import Ledger

        self._check_schema()
        return Ledger(
            self.settings.database, pool_size=1, replica_url=self.settings.database_replica
        )

    @cached_property
    def app(self) -> ConveyorApp:
        from conveyor.worker.app import create_app
        from conveyor.worker.observability.sentry import init_sentry

        self._check_schema()
        # Sentry first: its Celery integration must patch Celery before a worker imports it.
        # The component tag is the command without the program name: `worker`, `dlq list`.
        context = click.get_current_context(silent=True)
        command = context.command_path.partition(" ")[2] if context is not None else ""
        init_sentry(self.settings, command or "conveyor")
        return create_app(self.settings)

    def _check_schema(self) -> None:
        from conveyor.worker.schema import ensure_schema, wait_for_schema

        if self.waits_for_ledger:
            wait_for_schema(self.settings)
        else:
            ensure_schema(self.settings)


pass_state = click.make_pass_decorator(State, ensure=True)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
metrics_port_option = click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve /metrics, /healthz and /readyz on this port (default: CONVEYOR_METRICS_PORT).",
)


def autoscale_bounds(value: str, *, param_hint: str = "--autoscale") -> tuple[int, int]:
    """``MAX,MIN`` (``MIN`` defaults to 1) as two numbers with 1 <= MIN <= MAX <= 256."""
    high, comma, low = value.partition(",")
    try:
        bounds = int(high), (int(low) if comma else 1)
    except ValueError:
        raise click.BadParameter("expected MAX,MIN, e.g. 8,2", param_hint=param_hint) from None
    if not 1 <= bounds[1] <= bounds[0] <= 256:
        raise click.BadParameter("needs 1 <= MIN <= MAX <= 256", param_hint=param_hint)
    return bounds


def default_actor() -> str:
    """Who runs this command, for the audit log: ``user@host``."""
    from conveyor.worker.api.keys import process_actor

    return process_actor()


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def fail(message: str) -> NoReturn:
    """End the command with one line on stderr and exit code 1, secrets masked (the line
    may quote a library's error, and such errors can quote URLs)."""
    from conveyor.worker.observability.masking import mask

    click.echo(f"conveyor: error: {mask(message)}", err=True)
    sys.exit(EXIT_ERROR)
