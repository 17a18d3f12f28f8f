"""``conveyor bench`` at a tiny size: every system on both brokers, and its report.

The figures of a run this small mean nothing; what is checked is that each system was
driven through every phase, that the report holds what docs/benchmarks.md describes, and
that the run left the shared services as it found them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pytest
import redis
from kombu.connection import Connection

from tests.conftest import AMQP_URL, PG_ADMIN_URL, REDIS_URL, run_cli

pytestmark = pytest.mark.integration

JOBS = 60


def bench_databases() -> set[str]:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        rows = connection.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bench_%'")
        return {row[0] for row in rows}


def test_bench_measures_the_three_systems_on_both_brokers_and_cleans_up(tmp_path: Path) -> None:
    before = bench_databases()
    out = tmp_path / "bench"
    result = run_cli(
        "bench",
        *("--jobs", str(JOBS), "--enqueue-jobs", "20", "--latency-jobs", "10", "--rate", "50"),
        *("--repeat", "1", "--out", str(out), "--json"),
        *("--redis-url", REDIS_URL, "--rabbitmq-url", AMQP_URL, "--database-url", PG_ADMIN_URL),
        env={k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        timeout_s=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert json.loads((out / "bench.json").read_text()) == report
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = {(row["broker"], row["system"]): row for row in report["summary"]}
    assert set(rows) == {
        (broker, system)
        for broker in ("redis", "rabbitmq")
        for system in ("celery", "conveyor", "dramatiq")
    }
    for (_, system), row in rows.items():
        assert row["drain"]["median"] > 0
        assert row["enqueue_single"]["median"] > 0
        assert row["wait_p95_ms"]["median"] >= row["wait_p50_ms"]["median"] >= 0
        assert row["peak_rss_mib"]["median"] > 10  # a real process tree was sampled
        assert (row["enqueue_bulk"] is not None) == (system == "conveyor")
        assert (row["ledger_cpu_us_per_job"] is not None) == (system == "conveyor")
        if system == "celery":
            assert row["drain_vs_celery"] == pytest.approx(1.0)
    assert len(report["runs"]) == 6
    assert report["options"]["jobs"] == JOBS

    assert bench_databases() == before  # each Conveyor run dropped its ledger
    queues = [run["queue"] for run in report["runs"] if run["broker"] == "rabbitmq"]
    with Connection(AMQP_URL) as connection:
        for queue in queues:
            with pytest.raises(connection.channel_errors):
                connection.channel().queue_declare(queue, passive=True)
    client = redis.Redis.from_url(REDIS_URL)
    assert [key for key in client.scan_iter("*bench*")] == []
    assert list(client.scan_iter("dramatiq:*")) == []
    client.close()
