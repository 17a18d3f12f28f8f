"""What every ``conveyor`` command shares: lazily built settings and app, JSON output."""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

import click

from config import Settings, load_settings
from worker.app import ConveyorApp, create_app
from worker.schema import ensure_schema


class State:
    """What commands share: settings and app, built only when a command needs them."""

    @cached_property
    def settings(self) -> Settings:
        return load_settings()

    @cached_property
    def app(self) -> ConveyorApp:
        ensure_schema(self.settings)
        return create_app(self.settings)


pass_state = click.make_pass_decorator(State, ensure=True)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
