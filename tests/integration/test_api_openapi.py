"""The OpenAPI document is valid and true: schemathesis fuzzes the live server against it.

The server gets a ledger database of its own (the fuzzer replays and purges "all" dead
letters, and enqueues jobs with random queue names); afterwards every queue the fuzzer
made on the shared Redis is deleted, found through that ledger.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import schemathesis

from conveyor.worker.migrate import upgrade
from tests.conftest import REDIS_URL, create_database, delete_queues, drop_database
from tests.integration.test_api_harness import Api, api_env, serve

pytestmark = pytest.mark.integration

FUZZ_TIME_S = 15
EXAMPLES_PER_OPERATION = 20
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


def test_schemathesis_finds_no_server_error_and_no_drift_from_the_document(
    api: Api, tmp_path: Path
) -> None:
    token = api.key("admin")
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{api.base_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "all",
        "--exclude-checks",
        ",".join(sorted(CHECKS_SKIPPED)),
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--max-time",
        str(FUZZ_TIME_S),
        "--request-timeout",
        "10",
        "--no-color",
    ]
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=FUZZ_TIME_S + 60, cwd=tmp_path, check=False
    )
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    assert " passed" in run.stdout
    assert "api.unexpected_error" not in api.log.read_text()
