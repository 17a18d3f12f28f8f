"""Headers on every answer of the API: the request id, nosniff, no-store, HSTS behind TLS,
and CORS only for the origins named.

In-process (``TestClient``) on the embedded ledger: these are properties of the answers,
not of the broker or the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conveyor.config import Settings
from conveyor.worker.api.app import create_api
from conveyor.worker.api.keys import Scope, create_key
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.schema import ensure_schema

pytestmark = pytest.mark.integration

ORIGIN = "https://ops.example"


def embedded_app(tmp_path: Path, **settings: object) -> ConveyorApp:
    built = Settings(data_dir=tmp_path / "var", **settings)  # type: ignore[arg-type]
    ensure_schema(built)
    return create_app(built)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    app = embedded_app(tmp_path)
    _, token = create_key(app.ledger, "hygiene", [Scope.READ])
    with TestClient(create_api(app), base_url="http://127.0.0.1") as client:
        yield client, token


def test_every_answer_carries_a_request_id_nosniff_and_no_store(
    api: tuple[TestClient, str],
) -> None:
    client, token = api
    auth = {"Authorization": f"Bearer {token}"}
    answers = [
        client.get("/v1/queues", headers=auth),  # 200
        client.get("/v1/queues"),  # 401 problem
        client.get("/v1/jobs/no-such-job", headers=auth),  # 404 problem
        client.get("/healthz"),
        client.get("/console/login"),
    ]
    ids = set()
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff", answer.url
        assert answer.headers["cache-control"] == "no-store", answer.url
        assert "strict-transport-security" not in answer.headers  # plain http
        ids.add(answer.headers["x-request-id"])
    assert len(ids) == len(answers)  # one id per request
    refused = answers[1]
    assert refused.status_code == 401
    assert refused.json()["request_id"] == refused.headers["x-request-id"]


def test_a_callers_request_id_is_echoed_and_a_malformed_one_replaced(
    api: tuple[TestClient, str],
) -> None:
    client, _ = api
    mine = client.get("/v1/queues", headers={"X-Request-ID": "order-42.retry_1"})
    assert mine.headers["x-request-id"] == "order-42.retry_1"
    assert mine.json()["request_id"] == "order-42.retry_1"
    for bad in ("has spaces", "x" * 129, "semi;colon"):
        answer = client.get("/v1/queues", headers={"X-Request-ID": bad})
        assert answer.headers["x-request-id"] != bad
        assert len(answer.headers["x-request-id"]) == 32  # a fresh one


def test_hsts_only_over_tls(tmp_path: Path) -> None:
    app = embedded_app(tmp_path)
    with TestClient(create_api(app), base_url="https://conveyor.example") as client:
        answer = client.get("/healthz")
    assert answer.headers["strict-transport-security"].startswith("max-age=31536000")


def test_cors_is_off_by_default_and_answers_only_the_named_origins(
    api: tuple[TestClient, str], tmp_path: Path
) -> None:
    client, token = api
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
    closed = client.options("/v1/queues", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    plain = client.get("/v1/queues", headers={"Origin": ORIGIN, "Authorization": f"Bearer {token}"})
    assert "access-control-allow-origin" not in plain.headers

    app = embedded_app(tmp_path / "cors", api_cors_origins=[ORIGIN])
    with TestClient(create_api(app), base_url="http://127.0.0.1") as open_client:
        allowed = open_client.options("/v1/queues", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert "access-control-allow-credentials" not in allowed.headers
        other = open_client.options(
            "/v1/queues", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers
