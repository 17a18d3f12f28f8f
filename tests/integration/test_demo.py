"""`conveyor demo` on the embedded default and on Redis: its summary matches the ledger."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import REDIS_URL, delete_queues, run_cli

pytestmark = pytest.mark.integration

JOBS = 30


def ledger_counts(sqlite_path: Path) -> dict[str, Any]:
    engine = create_engine(f"sqlite:///{sqlite_path}")
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT state, attempts, dead_reason FROM conveyor_jobs WHERE task = 'demo.work'")
        ).all()
    engine.dispose()
    return {
        "jobs": len(rows),
        "succeeded": sum(1 for r in rows if r.state == "succeeded"),
        "retried_then_succeeded": sum(1 for r in rows if r.state == "succeeded" and r.attempts > 1),
        "dead_lettered": sum(1 for r in rows if r.state == "dead"),
        "dead_exhausted": sum(1 for r in rows if r.dead_reason == "exhausted"),
        "dead_fatal": sum(1 for r in rows if r.dead_reason == "fatal"),
        "attempts": sum(r.attempts for r in rows),
    }


def run_demo(tmp_path: Path, extra_env: dict[str, str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    result = run_cli("demo", "--json", "--jobs", str(JOBS), env={**env, **extra_env}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def check_against_ledger(summary: dict[str, Any], ledger: Path) -> None:
    assert summary["jobs"] == JOBS
    assert summary["unfinished"] == 0
    assert summary["worker_exit_code"] == 0
    counts = ledger_counts(ledger)
    for key, value in counts.items():
        assert summary[key] == value, key
    # The seeded mix has all three outcomes.
    assert summary["succeeded_first_try"] > 0
    assert summary["retried_then_succeeded"] > 0
    assert summary["dead_exhausted"] > 0
    assert summary["dead_fatal"] > 0


def test_demo_on_the_embedded_default(tmp_path: Path) -> None:
    """No CONVEYOR_* variables at all: SQLite broker and ledger under ./var."""
    summary = run_demo(tmp_path, {})
    assert (tmp_path / "var" / "broker.sqlite").exists()
    check_against_ledger(summary, tmp_path / "var" / "ledger.sqlite")


@pytest.fixture
def demo_queues(tmp_path: Path) -> Iterator[None]:
    """After the demo: delete its queues on the shared Redis (it leaves its `.dead` one)."""
    yield
    ledger = tmp_path / "var" / "ledger.sqlite"
    if ledger.exists():
        engine = create_engine(f"sqlite:///{ledger}")
        with engine.connect() as connection:
            queues = connection.execute(text("SELECT DISTINCT queue FROM conveyor_jobs")).all()
        engine.dispose()
        delete_queues(REDIS_URL, [row.queue for row in queues])


@pytest.mark.usefixtures("demo_queues")
def test_demo_on_redis(tmp_path: Path) -> None:
    summary = run_demo(tmp_path, {"CONVEYOR_BROKER_URL": REDIS_URL})
    assert not (tmp_path / "var" / "broker.sqlite").exists()
    check_against_ledger(summary, tmp_path / "var" / "ledger.sqlite")
