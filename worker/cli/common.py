"""What every ``conveyor`` command shares: lazily built settings and app, JSON output."""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

import click

from conveyor.config import Settings, load_settings
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.observability.sentry import init_sentry
from conveyor.worker.schema import ensure_schema, wait_for_schema


class State:
    """What commands share: settings and app, built only when a command needs them."""

    @cached_property
    def settings(self) -> Settings:
        return load_settings()

    waits_for_ledger = False
    """Set by services (worker, relay, API, Flower): wait for the ledger instead of failing."""

    @cached_property
    def app(self) -> ConveyorApp:
        if self.waits_for_ledger:
            wait_for_schema(self.settings)
        else:
            ensure_schema(self.settings)
        # Sentry first: its Celery integration must patch Celery before a worker imports it.
        # The component tag is the command without the program name: `worker`, `dlq list`.
        context = click.get_current_context(silent=True)
        command = context.command_path.partition(" ")[2] if context is not None else ""
        init_sentry(self.settings, command or "conveyor")
        return create_app(self.settings)


pass_state = click.make_pass_decorator(State, ensure=True)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
metrics_port_option = click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve /metrics, /healthz and /readyz on this port (default: CONVEYOR_METRICS_PORT).",
)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
