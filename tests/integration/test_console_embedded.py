"""The console on the embedded ledger (SQLite): the same pages and filters as on PostgreSQL.

SQLite has no JSONB containment and no ``date_trunc``: the payload filter and the
overview's minutes take other SQL there (:mod:`worker.api.pagination`,
:mod:`worker.console.queries`). In process, through Starlette's test client.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conveyor.config import Settings
from conveyor.worker.api.app import create_api
from conveyor.worker.api.keys import Scope, create_key
from conveyor.worker.app import ConveyorApp, create_app
from conveyor.worker.errors import Failure
from conveyor.worker.ledger import NewJob
from conveyor.worker.schema import ensure_schema

pytestmark = pytest.mark.integration


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[ConveyorApp]:
    settings = Settings(data_dir=tmp_path / "var")
    ensure_schema(settings)
    app = create_app(settings)
    yield app
    app.ledger.dispose()
    app.close()


def new_job(payload: dict[str, object]) -> NewJob:
    return NewJob(
        id=str(uuid.uuid4()), task="t.embedded", queue="q", payload=payload, max_attempts=1
    )


def test_pages_and_filters_work_on_sqlite(embedded: ConveyorApp) -> None:
    dead, other = (
        new_job({"customer_id": 42, "order": {"kind": "refund"}}),
        new_job({"customer_id": 7}),
    )
    for job in (dead, other):
        embedded.ledger.create(job)
    embedded.ledger.claim(dead.id, lease_s=10, worker="w@host", foreign=dead)
    failure = Failure("app.Broken", "it broke", "Traceback: it broke")
    assert embedded.ledger.fail(dead.id, 1, failure, retry_in_s=None, dead_reason="exhausted")
    _, token = create_key(embedded.ledger, "embedded", [Scope.OPERATE])

    client = TestClient(create_api(embedded), base_url="http://127.0.0.1")
    form = client.get("/console/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf is not None
    signed = client.post("/console/login", data={"csrf_token": csrf.group(1), "api_key": token})
    assert signed.status_code == 200  # followed the redirect to the overview
    assert re.search(r'id="total-dead">1<', signed.text)
    for query, found, missing in (
        ("customer_id = 42", dead.id, other.id),
        ('order.kind = "refund"', dead.id, other.id),
        ("customer_id = 7", other.id, dead.id),
    ):
        page = client.get("/console/jobs", params={"payload": query})
        assert page.status_code == 200
        assert found in page.text
        assert missing not in page.text
    job = client.get(f"/console/jobs/{dead.id}")
    assert "w@host" in job.text
    assert "Traceback: it broke" in job.text
    letters = client.get("/console/dead-letters")
    assert "app.Broken" in letters.text
    assert dead.id in letters.text
