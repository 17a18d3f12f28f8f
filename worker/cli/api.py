"""``conveyor api`` (serve the HTTP API) and ``conveyor apikey`` (manage its keys)."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from conveyor.worker.cli.common import State, emit_json, json_option, pass_state
from conveyor.worker.operations.views import iso

SCOPES = ("enqueue", "read", "operate", "admin")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--access-log/--no-access-log", default=True, help="Log one line per request.")
@pass_state
def api(state: State, host: str, port: int, access_log: bool) -> None:
    """Serve the HTTP API (uvicorn) until stopped; SIGTERM finishes open requests first."""
    import uvicorn

    from conveyor.worker.api.app import create_api
    from conveyor.worker.observability.logs import configure_logging

    configure_logging(state.settings.log_level, state.settings.log_format)
    state.waits_for_ledger = True
    application = create_api(state.app)  # the ledger's schema is checked here, once
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level=state.settings.log_level.lower(),
        access_log=access_log,
        server_header=False,
    )


@click.group()
def apikey() -> None:
    """Create, list and revoke API keys for the HTTP API."""


@apikey.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    type=click.Choice(SCOPES),
    multiple=True,
    required=True,
    help="What the key may do (repeatable): enqueue, read, operate (replay, purge, pause; "
    "implies read), admin (all of them).",
)
@json_option
@pass_state
def apikey_create(state: State, name: str, scopes: tuple[str, ...], as_json: bool) -> None:
    """Create key NAME and print its token: the only time it is shown."""
    from conveyor.worker.api.keys import Scope, create_key

    key, token = create_key(state.ledger, name, [Scope(scope) for scope in scopes])
    if as_json:
        emit_json(
            {
                "name": key.name,
                "prefix": key.prefix,
                "scopes": key.scopes,
                "created_at": iso(key.created_at),
                "token": token,
            }
        )
        return
    click.echo(token)
    click.echo(
        f"created API key {key.name!r} ({', '.join(key.scopes)}); "
        "store the token now, it is not shown again",
        err=True,
    )


@apikey.command("list")
@json_option
@pass_state
def apikey_list(state: State, as_json: bool) -> None:
    """List API keys (never their tokens)."""
    from conveyor.worker.api.keys import list_keys

    keys = list_keys(state.ledger)
    if as_json:
        emit_json(
            [
                {
                    "name": key.name,
                    "prefix": key.prefix,
                    "scopes": key.scopes,
                    "created_at": iso(key.created_at),
                    "revoked_at": iso(key.revoked_at),
                }
                for key in keys
            ]
        )
        return
    table = Table("name", "prefix", "scopes", "created", "revoked")
    for key in keys:
        revoked = key.revoked_at.isoformat()[:19] if key.revoked_at else ""
        table.add_row(
            key.name, key.prefix, ",".join(key.scopes), key.created_at.isoformat()[:19], revoked
        )
    Console().print(table)


@apikey.command("revoke")
@click.argument("name")
@pass_state
def apikey_revoke(state: State, name: str) -> None:
    """Revoke key NAME; every API server refuses it at once."""
    from conveyor.worker.api.keys import revoke_key

    if revoke_key(state.ledger, name):
        click.echo(f"revoked API key {name!r}; every API server refuses it from now on")
    else:
        click.echo(f"API key {name!r} was already revoked")


@click.group()
def console() -> None:
    """The operator console (served by `conveyor api` at /console): its users' passwords."""


@console.command("hash-password")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from stdin instead of asking."
)
def console_hash_password(password_stdin: bool) -> None:
    """Print a password's hash for a `name:role:HASH` entry of CONVEYOR_CONSOLE_USERS."""
    from conveyor.worker.console.access import hash_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
    click.echo(hash_password(password))
