"""CLI read commands that need no worker: a job type's retry schedule, one job's row."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from conveyor.worker.ledger import Ledger, NewJob
from tests.conftest import REDIS_URL, retire_jobs, run_cli, run_cli_listing_modules

pytestmark = pytest.mark.integration


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    # The reference jobs load only when named.
    jobs = "conveyor.tasks.demo,conveyor.tasks.webhooks"
    return {**env, "CONVEYOR_DATA_DIR": str(tmp_path / "var"), "CONVEYOR_TASK_MODULES": jobs}


def test_jobs_policy_prints_the_schedule_a_job_follows(clean_env: dict[str, str]) -> None:
    result = run_cli("jobs", "policy", "demo.work", "--json", env=clean_env)
    assert result.returncode == 0, result.stderr
    policy = json.loads(result.stdout)
    assert policy["task"] == "demo.work"
    assert policy["max_attempts"] == 4
    assert [(r["attempt"], r["min_delay_s"], r["max_delay_s"]) for r in policy["retries"]] == [
        (1, 0.0, 0.25),
        (2, 0.0, 0.5),
        (3, 0.0, 1.0),
    ]
    assert policy["max_total_delay_s"] == 1.75


def test_jobs_policy_as_a_table(clean_env: dict[str, str]) -> None:
    result = run_cli("jobs", "policy", "webhooks.deliver", env=clean_env)
    assert result.returncode == 0, result.stderr
    assert "webhooks.deliver: 8 attempts" in result.stdout
    # Waits of up to 5, 10, 20, 40, 80, 160 and 320 s: 635 s at most before dead.
    assert "at most 635s" in result.stdout


def test_the_reference_jobs_load_only_when_named(clean_env: dict[str, str]) -> None:
    bare = {k: v for k, v in clean_env.items() if k != "CONVEYOR_TASK_MODULES"}
    result = run_cli("jobs", "policy", "demo.work", env=bare)
    assert result.returncode == 1
    assert "unknown task 'demo.work'" in result.stderr
    assert "known: none" in result.stderr  # nor the chaos harness's job type


def test_jobs_show_reads_the_ledger_without_celery_alembic_or_the_api(
    clean_env: dict[str, str], pg_url: str
) -> None:
    ledger = Ledger(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    job_id, queue = str(uuid.uuid4()), f"test-{uuid.uuid4().hex[:12]}"
    ledger.create(
        NewJob(id=job_id, task="demo.work", queue=queue, payload={"n": 1}, max_attempts=4)
    )
    ledger.dispose()
    env = {**clean_env, "CONVEYOR_DATABASE_URL": pg_url, "CONVEYOR_BROKER_URL": REDIS_URL}
    try:
        result, modules = run_cli_listing_modules("jobs", "show", job_id, "--json", env=env)
    finally:
        retire_jobs(pg_url, [queue])  # or another test's relay would publish it as stranded
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["id"], shown["state"], shown["payload"]) == (job_id, "queued", {"n": 1})
    assert "sqlalchemy.orm" in modules  # it did read the ledger
    loaded = {name.split(".")[0] for name in modules}
    assert not {"alembic", "fastapi", "celery", "kombu", "uvicorn"} & loaded
    assert not any(name.startswith("conveyor.worker.chaos") for name in modules)
