"""The API's authorization matrix, route by route: who may call each operation.

:data:`MATRIX` is the expected table (docs/security.md prints the same one); the test
checks that it names every operation of the OpenAPI document, then calls each one as six
callers (no key, an unknown key, and a key of each scope) and checks the answer: 401 for
the first two, 403 ``insufficient-scope`` for a key that lacks the scope, and anything but
401 or 403 for one that has it (a 404, 409 or 422 means the handler ran).

In-process (``TestClient``) on the embedded ledger: the checks come before any handler
touches the broker. The rate-limit and revocation paths on PostgreSQL are in
``test_api_limits.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conveyor.worker.api.app import create_api
from conveyor.worker.api.keys import Scope, create_key
from tests.integration.test_api_hygiene import embedded_app

pytestmark = pytest.mark.integration

OPEN = "none"
MATRIX: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("POST", "/v1/jobs"): "enqueue",
    ("POST", "/v1/jobs:batch"): "enqueue",
    ("POST", "/v1/jobs/{job_id}/cancel"): "enqueue",
    ("GET", "/v1/jobs"): "read",
    ("GET", "/v1/jobs/{job_id}"): "read",
    ("GET", "/v1/dead-letters"): "read",
    ("GET", "/v1/dead-letters/{job_id}"): "read",
    ("GET", "/v1/queues"): "read",
    ("GET", "/v1/schedules"): "read",
    ("GET", "/v1/catalog"): "read",
    ("GET", "/metrics"): "read",
    ("POST", "/v1/dead-letters/{job_id}/replay"): "operate",
    ("POST", "/v1/dead-letters/replay"): "operate",
    ("POST", "/v1/dead-letters/purge"): "operate",
    ("POST", "/v1/queues/{queue}/pause"): "operate",
    ("POST", "/v1/queues/{queue}/resume"): "operate",
    ("POST", "/v1/schedules/{name}/pause"): "operate",
    ("POST", "/v1/schedules/{name}/resume"): "operate",
    ("POST", "/v1/schedules/{name}/run"): "operate",
}
"""Each operation and the scope it needs (``none``: it answers anyone)."""
GRANTS: dict[str, set[str]] = {
    "enqueue": {"enqueue"},
    "read": {"read"},
    "operate": {"operate", "read"},
    "admin": {"enqueue", "read", "operate", "admin"},
}
"""What each scope of key may do: ``operate`` implies ``read``, ``admin`` everything."""
PARAMETERS = {"job_id": str(uuid.uuid4()), "queue": "matrix-queue", "name": "no-such-schedule"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    # One address ("testclient") makes every unknown-key request: give it room.
    app = embedded_app(tmp_path, api_auth_failures_per_min=10_000)
    tokens = {
        scope: create_key(app.ledger, f"matrix-{scope}", [Scope(scope)])[1] for scope in GRANTS
    }
    with TestClient(create_api(app), base_url="http://127.0.0.1") as test_client:
        yield test_client, tokens


def test_the_matrix_names_every_operation_of_the_document(
    client: tuple[TestClient, dict[str, str]],
) -> None:
    test_client, _ = client
    document = test_client.get("/openapi.json").json()
    operations = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert operations == set(MATRIX)


def test_each_operation_answers_each_caller_as_the_matrix_says(
    client: tuple[TestClient, dict[str, str]],
) -> None:
    test_client, tokens = client
    callers: dict[str, str | None] = {
        "no key": None,
        "unknown key": "cvk_0123456789ab_not-a-key",
        **tokens,
    }
    checked = 0
    for (method, template), needed in MATRIX.items():
        path = template.format(**PARAMETERS)
        for caller, token in callers.items():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            body: dict[str, object] | None = {} if method == "POST" else None
            answer = test_client.request(method, path, headers=headers, json=body)
            where = f"{method} {template} as {caller}: {answer.status_code} {answer.text[:200]}"
            if needed == OPEN:
                assert answer.status_code not in (401, 403), where
            elif token is None or caller == "unknown key":
                assert answer.status_code == 401, where
                assert "WWW-Authenticate" in answer.headers, where
            elif needed in GRANTS[caller]:
                assert answer.status_code not in (401, 403, 429), where
            else:
                assert answer.status_code == 403, where
                assert answer.json()["type"] == "urn:conveyor:problem:insufficient-scope", where
            checked += 1
    assert checked == len(MATRIX) * len(callers)  # 21 operations x 6 callers
