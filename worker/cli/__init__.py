"""``conveyor``: the command line for producers, operators and developers.

User mistakes (bad settings, bad arguments, unknown jobs, unreachable services) end in
one line on stderr and a non-zero exit, never a traceback. Every read command takes
``--json`` and then prints only JSON on stdout.

Each command lives in a module of this package that is imported only when that command
runs (or its own ``--help`` is asked for): an operator's ``conveyor jobs show`` does not
wait for the HTTP API, the chaos harness or the migrations to load, and ``conveyor
--help`` imports click and nothing else of Conveyor's (tests/unit/test_cli_imports.py).
"""

from __future__ import annotations

import importlib
import sys

import click

from conveyor.worker.cli.common import fail

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (where it is defined, the line `conveyor --help` shows for it)
    "api": (
        "conveyor.worker.cli.api:api",
        "Serve the HTTP API (uvicorn) until stopped; SIGTERM finishes open requests first.",
    ),
    "apikey": (
        "conveyor.worker.cli.api:apikey",
        "Create, list and revoke API keys for the HTTP API.",
    ),
    "bench": (
        "conveyor.worker.cli.bench:bench",
        "Measure plain Celery, Conveyor and Dramatiq side by side on this machine.",
    ),
    "chaos": ("conveyor.worker.cli.chaos:chaos", "Prove the promises under injected faults."),
    "console": (
        "conveyor.worker.cli.api:console",
        "The operator console (served by `conveyor api` at /console): its users' passwords.",
    ),
    "demo": (
        "conveyor.worker.cli.demo:demo",
        "Start a worker, run a mix of jobs through it and summarise what happened.",
    ),
    "dlq": (
        "conveyor.worker.cli.dlq:dlq",
        "Triage the dead-letter queue: list, show, replay, purge, audit.",
    ),
    "enqueue": (
        "conveyor.worker.cli.enqueue:enqueue",
        "Enqueue TASK with PAYLOAD (a JSON object), or each job of --from-file.",
    ),
    "flower": (
        "conveyor.worker.cli.flower:flower",
        "Serve Flower (live workers, task events, queue lengths) until stopped.",
    ),
    "health": (
        "conveyor.worker.cli.admin:health",
        "Check that the ledger and the broker answer (exit 1 if not), or a process's /healthz.",
    ),
    "jobs": ("conveyor.worker.cli.jobs:jobs", "Look at jobs in the ledger."),
    "migrate": (
        "conveyor.worker.cli.admin:migrate",
        "Apply the ledger's schema migrations (safe to run again).",
    ),
    "queues": (
        "conveyor.worker.cli.queues:queues",
        "Every queue's queued, running, scheduled and dead jobs, its oldest wait, relay lag.",
    ),
    "relay": (
        "conveyor.worker.cli.serve:relay",
        "Publish due retries and delayed jobs, recover expired leases (SIGTERM stops it).",
    ),
    "scale": (
        "conveyor.worker.cli.scale:scale",
        "Per queue: depth, oldest wait, consuming workers, and the processes to drain it in time.",
    ),
    "schedules": (
        "conveyor.worker.cli.schedules:schedules",
        "Periodic jobs: list them, pause and resume one, or run one now.",
    ),
    "worker": (
        "conveyor.worker.cli.serve:worker",
        "Run a worker that consumes jobs until stopped (SIGTERM: hand back, finish, exit).",
    ),
}
"""Every command. Each line is its docstring's first sentence (a unit test holds them equal)."""


class LazyGroup(click.Group):
    """A group that imports a command's module only when the command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, _, attribute = COMMANDS[cmd_name][0].partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``, from :data:`COMMANDS`, without importing one."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, line) for name, (_, line) in sorted(COMMANDS.items())])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Conveyor: a job-processing platform on Celery."""


def user_error(exc: Exception) -> str | None:
    """The one line that reports ``exc`` to the user, or None if it is a bug to show whole.

    The exception classes are imported here, not at the top: a command that raised one
    has loaded its library already.
    """
    from conveyor.config.errors import ConveyorError

    if isinstance(exc, ConveyorError):
        return str(exc)
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy.exc import OperationalError as DatabaseError
    from sqlalchemy.exc import ProgrammingError

    if isinstance(exc, ProgrammingError):
        return f"the ledger's schema is missing or old ({exc.orig}); run `conveyor migrate`"
    if isinstance(exc, DatabaseError):
        return f"cannot reach the ledger database: {str(exc.orig).strip().splitlines()[0]}"
    if isinstance(exc, BrokerError):
        return f"cannot reach the broker: {exc}"
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``conveyor`` command."""
    try:
        cli.main(args=argv, prog_name="conveyor", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        fail("aborted")
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        fail(message)


if __name__ == "__main__":
    main()
