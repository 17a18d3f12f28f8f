"""The pure parts of observability: log rendering, probe answers, liveness, ledger gauges."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from conveyor.config.settings import LogFormat
from conveyor.worker.ledger import Ledger, NewJob
from conveyor.worker.migrate import upgrade
from conveyor.worker.models import utcnow
from conveyor.worker.observability.logs import configure_logging, job_fields
from conveyor.worker.observability.metrics import LedgerCollector
from conveyor.worker.observability.probes import Liveness, ProbeServer, is_loopback
from tests.conftest import metric_samples

pytestmark = pytest.mark.unit


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger back as it was: configure_logging replaces its handlers."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_lines_are_json_with_the_event_and_fields_but_never_job_data(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", LogFormat.JSON)
    log = logging.getLogger("conveyor.test")
    fields = job_fields("j-1", "webhooks.deliver", "default", 2)
    log.warning("job.retry_scheduled", extra=fields | {"delay_s": 1.5, "payload": {"k": "v"}})
    # Celery passes a task's arguments as extra={"data": ...} with "Task ... received".
    logging.getLogger("celery.worker.strategy").info("Task x received", extra={"data": "k=v"})
    logging.getLogger("celery.app.trace").info("Task x succeeded: RESULT")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 2  # celery.app.trace is turned down to WARNING
    retry, received = lines
    assert retry["event"] == "job.retry_scheduled"
    assert (retry["level"], retry["logger"]) == ("warning", "conveyor.test")
    assert (retry["job_id"], retry["task"], retry["queue"], retry["attempt"]) == (
        *("j-1", "webhooks.deliver", "default", 2),
    )
    assert retry["delay_s"] == 1.5
    assert "payload" not in retry
    assert "data" not in received
    assert retry["timestamp"].endswith("Z")


def test_job_fields_leave_out_what_is_not_known() -> None:
    assert job_fields("j-1") == {"job_id": "j-1"}
    assert job_fields("j-1", attempt=0) == {"job_id": "j-1", "attempt": 0}


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("", False),
        ("10.1.2.3", False),
        ("example.org", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_liveness_needs_a_recent_beat() -> None:
    liveness = Liveness(stale_after_s=0.05)
    assert not liveness.live  # never proved anything
    liveness.beat()
    assert liveness.live
    time.sleep(0.1)
    assert not liveness.live
    liveness.beat()
    liveness.lost()
    assert not liveness.live


def call(server: ProbeServer, path: str, authorization: str = "") -> tuple[str, bytes]:
    answered: list[str] = []
    environ: dict[str, Any] = {"PATH_INFO": path, "HTTP_AUTHORIZATION": authorization}

    def start_response(status: str, _headers: Any, _exc_info: Any = None) -> Any:
        answered.append(status)

    body = b"".join(server(environ, start_response))
    return answered[0], body


def probe_server(*, token: str | None, live: bool, ready: bool) -> ProbeServer:
    return ProbeServer(
        registry=CollectorRegistry(),
        live=lambda: live,
        ready=lambda: {"ledger": "ok", "broker": "ok" if ready else "failed: OSError"},
        token=token,
    )


def test_probe_answers_follow_liveness_and_readiness() -> None:
    healthy = probe_server(token=None, live=True, ready=True)
    assert call(healthy, "/healthz") == ("200 OK", b'{"live": true}')
    assert call(healthy, "/readyz")[0] == "200 OK"
    sick = probe_server(token=None, live=False, ready=False)
    assert call(sick, "/healthz")[0] == "503 Service Unavailable"
    status, body = call(sick, "/readyz")
    assert status == "503 Service Unavailable"
    assert json.loads(body)["checks"]["broker"] == "failed: OSError"
    assert call(sick, "/nope")[0] == "404 Not Found"


def test_metrics_need_the_token_or_loopback() -> None:
    closed = probe_server(token=None, live=True, ready=True)
    assert call(closed, "/metrics")[0] == "403 Forbidden"  # not bound to loopback
    closed.open_metrics = True
    assert call(closed, "/metrics")[0] == "200 OK"
    guarded = probe_server(token="s3cret", live=True, ready=True)
    assert call(guarded, "/metrics")[0] == "401 Unauthorized"
    assert call(guarded, "/metrics", "Bearer wrong")[0] == "401 Unauthorized"
    assert call(guarded, "/metrics", "Bearer s3cret")[0] == "200 OK"


def test_ledger_gauges_count_jobs_by_queue_and_state(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    upgrade(url)
    ledger = Ledger(url)
    later = utcnow() + timedelta(hours=1)
    for queue, run_at in [("a", None), ("a", None), ("a", later), ("b", None)]:
        ledger.create(
            NewJob(
                id=f"{queue}-{run_at}-{time.monotonic_ns()}",
                task="t",
                queue=queue,
                payload={},
                max_attempts=3,
                run_at=run_at,
            )
        )
    registry = CollectorRegistry()
    registry.register(LedgerCollector(ledger))
    samples = metric_samples(generate_latest(registry).decode())
    ledger.dispose()
    jobs = "conveyor_queue_jobs"
    assert samples[jobs, frozenset({("queue", "a"), ("state", "queued")})] == 2
    assert samples[jobs, frozenset({("queue", "a"), ("state", "scheduled")})] == 1
    assert samples[jobs, frozenset({("queue", "b"), ("state", "queued")})] == 1
    assert samples[jobs, frozenset({("queue", "b"), ("state", "dead")})] == 0
    assert samples["conveyor_queue_oldest_job_age_seconds", frozenset({("queue", "a")})] >= 0
    assert samples["conveyor_outbox_lag_seconds", frozenset()] == 0  # nothing due waits
