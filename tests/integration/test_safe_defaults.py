"""Nothing dangerous by default: a deployment that names no task modules runs no job of
Conveyor's own (the reference jobs, the chaos harness's, the benchmark's).

A real process builds the app from the environment alone (embedded broker and ledger,
``CONVEYOR_TASK_MODULES`` unset) and lists the tasks it registered: a job that is not
registered is an unknown task to every producer and worker of that deployment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor.worker.cli.chaos import DEFAULT_AMQP, DEFAULT_PG, DEFAULT_REDIS
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.integration

OWN_JOBS = {"demo.work", "webhooks.deliver", "chaos.work", "bench.job", "bench.noop"}
LIST_TASKS = """
import json, sys
from conveyor.config import load_settings
from conveyor.worker.app import create_app
app = create_app(load_settings())
print(json.dumps(sorted(name for name in app.tasks if not name.startswith("celery."))))
"""


def printed(code: str, env: dict[str, str]) -> Any:
    """What a real process running ``code`` printed, as JSON."""
    ran = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(ran.stdout)


def registered(env: dict[str, str]) -> set[str]:
    return set(printed(LIST_TASKS, env))


def test_no_job_of_conveyors_own_is_registered_unless_named(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_DATA_DIR"] = str(tmp_path / "var")
    assert not registered(env) & OWN_JOBS
    named = registered({**env, "CONVEYOR_TASK_MODULES": "conveyor.tasks.demo"})
    assert "demo.work" in named  # the same job, once a deployment names it


HARNESS_URLS = (DEFAULT_PG, DEFAULT_REDIS, DEFAULT_AMQP)
SETTINGS_OF_AN_EMPTY_ENVIRONMENT = """
import json
from conveyor.config import load_settings
settings = load_settings()
urls = [settings.broker, settings.database_url, settings.database_replica_url]
print(json.dumps([u if isinstance(u, str) or u is None else u.get_secret_value() for u in urls]))
"""


def test_the_chaos_harness_credentials_apply_nowhere_else(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_DATA_DIR"] = str(tmp_path / "var")
    urls = [url for url in printed(SETTINGS_OF_AN_EMPTY_ENVIRONMENT, env) if url is not None]
    assert urls  # the embedded broker and ledger
    assert all("@" not in url for url in urls), urls  # no credentials by default
    # The harness's URLs are defaults of two local tools' options (`conveyor chaos`, and
    # `conveyor bench`, which runs on loopback too), never of a setting.
    package = ROOT / "worker"
    holders = {
        str(path.relative_to(ROOT))
        for path in [*package.rglob("*.py"), *(ROOT / "config").rglob("*.py")]
        if any(url in path.read_text() for url in HARNESS_URLS)
    }
    assert holders == {"worker/cli/chaos.py", "worker/cli/bench.py"}


@pytest.mark.parametrize(
    "option", ["--pg-url=postgresql://u:hunter2@db.example.com/x", "--amqp-url=amqp://10.0.0.5//"]
)
def test_the_chaos_harness_runs_against_loopback_only(option: str) -> None:
    refused = run_cli("chaos", "run", "worker-kill", option, env=dict(os.environ))
    assert refused.returncode == 2
    assert "must be on loopback" in refused.stderr
    assert "hunter2" not in refused.stderr + refused.stdout
