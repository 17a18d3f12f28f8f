"""The OpenAPI document is valid and true: schemathesis fuzzes the live server against it.

Every operation in the document is fuzzed (the run's summary must say so) with an admin
key, then again with no key, a wrong key and a read-only key: with those, no answer is a
5xx, nothing but the probes answers a success without a valid key, and a read-only key
changes nothing (checks of our own, loaded into schemathesis from :data:`HOOKS`).

The server gets a ledger database of its own (the fuzzer replays and purges "all" dead
letters, and enqueues jobs with random queue names); afterwards every queue the fuzzer
made on the shared Redis is deleted, found through that ledger.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import schemathesis

from conveyor.worker.migrate import upgrade
from tests.conftest import REDIS_URL, create_database, delete_queues, drop_database
from tests.integration.test_api_harness import Api, api_env, serve

pytestmark = pytest.mark.integration

FUZZ_TIME_S = 15
EXAMPLES_PER_OPERATION = 20
KEYLESS_TIME_S = 15
"""Each run stops at this bound: without the coverage phase, the fuzzing phase has it all."""
KEYLESS_EXAMPLES_PER_OPERATION = 10
"""For the runs without a valid key: most answers are a quick 401 or 403."""
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
HOOKS = '''
import schemathesis

PROBES = {"/healthz", "/readyz"}


@schemathesis.check
def refused_without_a_key(ctx, response, case):
    """Without a valid key, nothing but the probes answers with a success."""
    if case.path not in PROBES and 200 <= response.status_code < 300:
        raise AssertionError(f"answered {response.status_code} without a valid key")


@schemathesis.check
def nothing_written_with_a_read_key(ctx, response, case):
    """A key with the read scope only never changes anything (every write is a POST)."""
    if case.method.upper() == "POST" and 200 <= response.status_code < 300:
        raise AssertionError(f"a read-only key was answered {response.status_code}")
'''
"""Checks of our own, given to schemathesis as a hooks module (``SCHEMATHESIS_HOOKS``)."""
CHECKS_SKIPPED = {
    # Valid by the schema, refused by design: a payload must also fit its task's own schema,
    # an empty dead-letter filter needs "all", and cursors are only those the API gave out.
    "positive_data_acceptance",
    # FastAPI takes the last of repeated query parameters instead of refusing the repeat.
    "negative_data_rejection",
}


@pytest.fixture(scope="module")
def ledger_url() -> Iterator[str]:
    url = create_database("conveyor_api_fuzz")
    upgrade(url.replace("postgresql://", "postgresql+psycopg://"))
    yield url
    with psycopg.connect(url) as connection:
        queues = [row[0] for row in connection.execute("SELECT DISTINCT queue FROM conveyor_jobs")]
    delete_queues(REDIS_URL, queues)
    drop_database(url)


@pytest.fixture(scope="module")
def api(ledger_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("api-fuzz")
    env = api_env(
        ledger_url,
        REDIS_URL,
        tmp,
        default_queue=f"test-api-fuzz-{uuid.uuid4().hex[:8]}",
        api_rate_limit_per_s="100000",
    )
    yield from serve(tmp, env)


def test_the_openapi_document_is_valid_and_documents_every_route(api: Api) -> None:
    schema = schemathesis.openapi.from_url(f"{api.base_url}/openapi.json")
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    document = schema.raw_schema
    assert set(document["paths"]) == {
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/jobs",
        "/v1/jobs:batch",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/dead-letters",
        "/v1/dead-letters/{job_id}",
        "/v1/dead-letters/{job_id}/replay",
        "/v1/dead-letters/replay",
        "/v1/dead-letters/purge",
        "/v1/queues",
        "/v1/queues/{queue}/pause",
        "/v1/queues/{queue}/resume",
        "/v1/schedules",
        "/v1/schedules/{name}/pause",
        "/v1/schedules/{name}/resume",
        "/v1/schedules/{name}/run",
        "/v1/catalog",
    }
    components = document["components"]
    assert components["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": components["securitySchemes"]["ApiKey"]["description"],
    }
    for name in ("JobCreate", "JobBatch", "JobAccepted", "JobView", "Outcome", "QueuesView"):
        assert components["schemas"][name]["examples"], f"{name} has no example"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                assert operation["security"] == [{"ApiKey": []}], (method, path)
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert list(response["content"]) == ["application/problem+json"]
    docs = api.client().get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


def operations(api: Api) -> int:
    """How many operations the served document has (a path may have several methods)."""
    document = httpx.get(f"{api.base_url}/openapi.json", timeout=30).json()
    return sum(method in HTTP_METHODS for path in document["paths"].values() for method in path)


def schemathesis_run(
    api: Api, tmp_path: Path, *options: str, token: str | None, max_time_s: int, hooks: bool
) -> subprocess.CompletedProcess[str]:
    """``st run`` against the live server, with ``token`` as its bearer key, and with
    ``hooks`` the checks in :data:`HOOKS` (which ``--checks all`` would then include);
    returns it once it is done."""
    env = dict(os.environ)
    if hooks:
        (tmp_path / "conveyor_checks.py").write_text(HOOKS)
        env |= {"SCHEMATHESIS_HOOKS": "conveyor_checks", "PYTHONPATH": str(tmp_path)}
    auth = ["--header", f"Authorization: Bearer {token}"] if token is not None else []
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{api.base_url}/openapi.json",
        *auth,
        *options,
        "--max-time",
        str(max_time_s),
        "--request-timeout",
        "10",
        "--no-color",
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=max_time_s + 60,
        cwd=tmp_path,
        env=env,
        check=False,
    )


def assert_every_operation_tested(api: Api, run: subprocess.CompletedProcess[str]) -> None:
    """The run's summary says it selected and tested every operation of the document."""
    total = str(operations(api))
    summary = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", run.stdout)
    assert summary is not None, run.stdout[-5_000:]
    assert summary.groups() == (total, total, total), run.stdout[-5_000:]


def test_schemathesis_finds_no_server_error_and_no_drift_from_the_document(
    api: Api, tmp_path: Path
) -> None:
    """With an admin key, every operation, every check (but the two the design skips)."""
    run = schemathesis_run(
        api,
        tmp_path,
        "--checks",
        "all",
        "--exclude-checks",
        ",".join(sorted(CHECKS_SKIPPED)),
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        token=api.key("admin"),
        max_time_s=FUZZ_TIME_S,
        hooks=False,
    )
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    assert " passed" in run.stdout
    assert_every_operation_tested(api, run)
    assert "api.unexpected_error" not in api.log.read_text()


@pytest.mark.parametrize(
    ("credential", "checks"),
    [
        ("none", "refused_without_a_key"),
        ("wrong", "refused_without_a_key"),
        ("read", "nothing_written_with_a_read_key"),
    ],
)
def test_schemathesis_without_a_valid_key_finds_no_server_error_and_no_answer(
    api: Api, tmp_path: Path, credential: str, checks: str
) -> None:
    """With no key, a wrong key or a read-only key, every operation answers without a 5xx
    and gives nothing away: no success but the probes' without a key, no write with a
    read-only one."""
    token = {"none": None, "wrong": "cvk_not-a-key", "read": api.key("read")}[credential]
    run = schemathesis_run(
        api,
        tmp_path,
        "--checks",
        f"not_a_server_error,{checks}",
        "--max-examples",
        str(KEYLESS_EXAMPLES_PER_OPERATION),
        # Not coverage: its cases vary the parameters, which a refused key never reaches,
        # and on a slow machine it used the whole time, so that the fuzzing phase never
        # ran and only the 4 operations with examples were tested; nor stateful: its
        # links follow successes, and there are none.
        "--phases",
        "examples,fuzzing",
        token=token,
        max_time_s=KEYLESS_TIME_S,
        hooks=True,
    )
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    assert " passed" in run.stdout
    assert_every_operation_tested(api, run)
    assert "api.unexpected_error" not in api.log.read_text()
