"""The job catalog: a producer without the jobs' code enqueues what a running worker declared."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import enqueue
from conveyor.worker.errors import PayloadInvalid
from conveyor.worker.models import JobState
from tests.conftest import ROOT, WorkerFactory, run_cli, state_of, wait_for

pytestmark = pytest.mark.integration

PRODUCER = """
import json, sys
from conveyor.worker.client import enqueue
from conveyor.worker.errors import PayloadInvalid, UnknownTask
from conveyor.worker.jobs import REGISTRY

queue = sys.argv[1]
out = {"imported": "test.typed" in REGISTRY}
out["job_id"] = enqueue("test.typed", {"count": 21}, queue=queue)
for name, payload in (("bad", {"count": -1}), ("wrong_type", {"count": "many"})):
    try:
        enqueue("test.typed", payload, queue=queue)
    except PayloadInvalid as exc:
        out[name] = str(exc)
try:
    enqueue("test.never_declared", {}, queue=queue)
except UnknownTask as exc:
    out["unknown"] = str(exc)
print(json.dumps(out))
"""


def produce_without_job_code(env: dict[str, str], queue: str) -> dict[str, Any]:
    """Run a producer whose process imports no test job module."""
    bare = {k: v for k, v in env.items() if k != "CONVEYOR_TASK_MODULES"}
    done = subprocess.run(
        [sys.executable, "-c", PRODUCER, queue],
        env=bare,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_a_producer_without_the_job_modules_enqueues_against_the_catalog(
    app: ConveyorApp, env: dict[str, str], queue: str, start_worker: WorkerFactory
) -> None:
    start_worker(env, queue)
    declared = wait_for(lambda: app.ledger.declared("test.typed"))
    assert declared.max_attempts == 3
    assert declared.payload_schema is not None
    assert declared.payload_schema["properties"]["count"]["minimum"] == 0

    produced = produce_without_job_code(env, queue)
    assert produced["imported"] is False
    assert wait_for(lambda: state_of(app, produced["job_id"]) == JobState.SUCCEEDED)
    job = app.ledger.get(produced["job_id"])
    assert job is not None
    assert (job.result, job.max_attempts) == (42, 3)

    # The same refusal as in a process that has the job's code: same error, same field.
    with pytest.raises(PayloadInvalid) as here:
        enqueue("test.typed", {"count": -1}, queue=queue, app=app)
    field = "payload for 'test.typed' is invalid at count:"
    assert str(here.value).startswith(field)
    assert produced["bad"].startswith(field)
    assert produced["wrong_type"].startswith(field)
    assert "test.never_declared" in produced["unknown"]
    assert "no worker has declared it" in produced["unknown"]

    listed = run_cli("jobs", "catalog", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    by_name = {row["name"]: row for row in json.loads(listed.stdout)}
    assert by_name["test.typed"]["max_attempts"] == 3
    assert by_name["test.typed"]["version"]
    assert by_name["demo.work"]["payload_schema"]["properties"]["n"]["minimum"] == 0
