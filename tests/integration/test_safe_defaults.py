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

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

OWN_JOBS = {"demo.work", "webhooks.deliver", "chaos.work", "bench.job", "bench.noop"}
LIST_TASKS = """
import json, sys
from conveyor.config import load_settings
from conveyor.worker.app import create_app
app = create_app(load_settings())
print(json.dumps(sorted(name for name in app.tasks if not name.startswith("celery."))))
"""


def registered(env: dict[str, str]) -> set[str]:
    listed = subprocess.run(
        [sys.executable, "-c", LIST_TASKS],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(listed.stdout))


def test_no_job_of_conveyors_own_is_registered_unless_named(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_DATA_DIR"] = str(tmp_path / "var")
    assert not registered(env) & OWN_JOBS
    named = registered({**env, "CONVEYOR_TASK_MODULES": "conveyor.tasks.demo"})
    assert "demo.work" in named  # the same job, once a deployment names it
