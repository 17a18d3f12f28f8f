"""The API when things go wrong: broker down (503), rate limit (429), a broken ledger (500).

One server with its own ledger database, a broker address where nothing listens, a rate
limit of one request per second, and (for the 500) an audit table dropped behind its back.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from conveyor.worker.migrate import upgrade
from tests.conftest import create_database, drop_database
from tests.integration.test_api_harness import (
    Api,
    api_env,
    assert_problem,
    create_key,
    free_port,
    serve,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ledger_url() -> Iterator[str]:
    url = create_database("conveyor_api_outage")
    upgrade(url.replace("postgresql://", "postgresql+psycopg://"))
    yield url
    drop_database(url)


@pytest.fixture(scope="module")
def outage_env(ledger_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}//"  # nothing listens there
    return api_env(
        ledger_url, nowhere, tmp_path_factory.mktemp("api-outage"), api_rate_limit_per_s="1"
    )


@pytest.fixture(scope="module")
def keys(outage_env: dict[str, str]) -> dict[str, str]:
    """Made before the server starts (the CLI needs no broker for keys)."""
    return {scope: create_key(outage_env, scope) for scope in ("read", "enqueue", "admin")}


@pytest.fixture(scope="module")
def api(
    outage_env: dict[str, str], keys: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    yield from serve(tmp_path_factory.mktemp("api-outage-server"), outage_env)


def test_outages_and_limits_answer_with_their_problem(
    api: Api, keys: dict[str, str], ledger_url: str
) -> None:
    queue = f"test-api-outage-{uuid.uuid4().hex[:8]}"
    job = {"task": "demo.work", "payload": {"n": 1}, "queue": queue}
    with ThreadPoolExecutor(1) as background:
        # Publishing retries for a while before it gives up; check the rest meanwhile.
        enqueued = background.submit(api.client(keys["enqueue"]).post, "/v1/jobs", json=job)

        ready = api.client().get("/readyz")
        assert assert_problem(ready, 503, "not-ready")["checks"] == {
            "ledger": "ok",
            "broker": "failed",
        }

        reader = api.client(keys["read"])
        assert reader.get("/v1/queues").status_code == 200
        limited = reader.get("/v1/queues")
        assert_problem(limited, 429, "rate-limited")
        assert limited.headers["retry-after"] == "1"
        time.sleep(1.05)
        assert reader.get("/v1/queues").status_code == 200

        with psycopg.connect(ledger_url) as connection:
            connection.execute("DROP TABLE conveyor_audit")
        broken = api.client(keys["admin"]).post("/v1/dead-letters/purge", json={"all": True})
        problem = assert_problem(broken, 500)
        assert problem == {
            "type": "about:blank",
            "title": "Internal Server Error",
            "status": 500,
            "detail": "an unexpected error occurred; it has been logged",
            "instance": "/v1/dead-letters/purge",
            "request_id": broken.headers["x-request-id"],  # the 500 a caller can quote
        }

        unavailable = enqueued.result(timeout=120)
    assert_problem(unavailable, 503, "broker-unavailable")
    assert unavailable.headers["retry-after"] == "5"
    jobs = api.client(keys["admin"]).get("/v1/jobs", params={"queue": queue}).json()
    assert jobs == {"items": [], "next_cursor": None}  # nothing was left half-made

    log = Path(api.log).read_text()
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    unexpected = [event for event in events if event["event"] == "api.unexpected_error"]
    assert [event["error_type"] for event in unexpected] == ["sqlalchemy.exc.ProgrammingError"]
    assert unexpected[0]["level"] == "error"
    assert "conveyor_audit" not in log  # the error's message (SQL, parameters) is not logged
    assert any(e["event"] == "api.not_ready" and e["check"] == "broker" for e in events)


def test_healthz_stays_up_while_dependencies_are_down(api: Api) -> None:
    assert httpx.get(f"{api.base_url}/healthz").json() == {"status": "ok"}
