"""``conveyor health`` and ``conveyor migrate``: the ledger and the broker."""

from __future__ import annotations

import sys

import click

from conveyor.worker.cli.common import EXIT_ERROR, State, emit_json, json_option, pass_state
from conveyor.worker.observability.probes import CHECK_TIMEOUT_S, readiness


@click.command()
@click.option("--url", help="Ask a running worker, relay or API instead: its base URL.")
@json_option
@pass_state
def health(state: State, url: str | None, as_json: bool) -> None:
    """Check that the ledger and the broker answer (exit 1 if not), or a process's /healthz.

    With ``--url http://host:9808`` it asks that worker's (or relay's, or API's) liveness
    probe: exit 0 while it is live (a worker: consuming its queues), 1 otherwise.
    """
    checks = {"live": probe_live(url)} if url is not None else readiness(state.app)
    ok = all(result == "ok" for result in checks.values())
    if as_json:
        emit_json({"ok": ok, "checks": checks})
    else:
        for name, result in checks.items():
            click.echo(f"{name}: {result}")
    if not ok:
        sys.exit(EXIT_ERROR)


def probe_live(url: str) -> str:
    """``ok``, or why ``URL/healthz`` did not say the process is live."""
    import httpx

    try:
        answer = httpx.get(url.rstrip("/") + "/healthz", timeout=CHECK_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return f"failed: {type(exc).__name__}"
    return "ok" if answer.status_code == 200 else f"failed: HTTP {answer.status_code}"


@click.command()
@pass_state
def migrate(state: State) -> None:
    """Apply the ledger's schema migrations (safe to run again)."""
    from conveyor.worker.migrate import upgrade

    before, after = upgrade(state.settings.database)
    if before == after:
        click.echo(f"ledger already at revision {after}")
    else:
        click.echo(f"ledger migrated from {before or 'empty'} to revision {after}")
