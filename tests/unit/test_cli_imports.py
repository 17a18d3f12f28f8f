"""The command line loads what a command needs when it runs, and nothing before.

Checked by the names in ``sys.modules`` when a command ends, never by time: an operator's
``conveyor --help`` must not wait for the ORM, Alembic, the HTTP API, Celery or the chaos
harness, and the command list it prints must say what each command's own help says.
"""

from __future__ import annotations

import os
import re

import click
import pytest

from conveyor.worker.cli import COMMANDS, cli
from conveyor.worker.migrate import head_revision
from conveyor.worker.schema import HEAD_REVISION
from tests.conftest import run_cli, run_cli_listing_modules

pytestmark = pytest.mark.unit

HEAVY = ("sqlalchemy", "alembic", "fastapi", "celery", "kombu", "pydantic", "rich")
"""Libraries that `conveyor --help` has no use for (the ORM alone costs about 150 ms)."""


def imported_by(*args: str) -> set[str]:
    """Every module that ``conveyor ARGS`` has imported when it ends."""
    result, modules = run_cli_listing_modules(*args)
    assert result.returncode == 0, result.stderr
    return modules


def test_help_imports_no_heavy_library_and_no_command() -> None:
    modules = imported_by("--help")
    assert "click" in modules  # the check sees what was imported
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == []
    commands = sorted(
        m
        for m in modules
        if m.startswith("conveyor.worker.cli.") and m != "conveyor.worker.cli.common"
    )
    assert commands == []
    assert not any(m.startswith("conveyor.worker.chaos") for m in modules)


def test_a_command_help_imports_its_own_module_only() -> None:
    modules = imported_by("jobs", "--help")
    assert "conveyor.worker.cli.jobs" in modules
    for other in ("api", "chaos", "dlq", "flower", "serve", "admin", "demo", "enqueue"):
        assert f"conveyor.worker.cli.{other}" not in modules
    assert not {"alembic", "fastapi", "celery"} & {m.split(".")[0] for m in modules}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_command_list_says_what_each_command_says_of_itself(name: str) -> None:
    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    assert command.name == name
    assert COMMANDS[name][1] == command.get_short_help_str(limit=1000)


def test_help_lists_every_command() -> None:
    result = run_cli("--help", env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("Commands:", 1)[1]
    listed = re.findall(r"^  (\S+)  ", section, re.MULTILINE)
    assert listed == sorted(COMMANDS)


def test_an_unknown_command_is_a_usage_error() -> None:
    result = run_cli("enqeue", env=dict(os.environ))
    assert result.returncode == 2
    assert "No such command 'enqeue'" in result.stderr


def test_the_schema_check_needs_the_revision_alembic_calls_head() -> None:
    assert head_revision() == HEAD_REVISION
