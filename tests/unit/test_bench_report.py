"""``conveyor bench``'s arithmetic: percentiles, medians with their spread, ratios."""

from __future__ import annotations

import pytest

from conveyor.worker.bench.report import render, summarise
from conveyor.worker.bench.runner import Figures, percentile

pytestmark = pytest.mark.unit


def figures(system: str, repetition: int, drain: float, bulk: float | None = None) -> Figures:
    return Figures(
        broker="redis",
        kind="noop",
        system=system,
        repetition=repetition,
        queue=f"q-{system}-{repetition}",
        enqueue_single=drain * 2,
        enqueue_bulk=bulk,
        drain=drain,
        startup_s=1.0,
        peak_rss_mib=100.0,
        cpu_us_per_job=500.0,
        ledger_cpu_us_per_job=None,
        wait_ms={"p50": 1.0, "p95": 2.0, "p99": 3.0},
    )


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (50, 95, 99, 100)] == [50.0, 95.0, 99.0, 100.0]
    assert percentile([7.0], 95) == 7.0


def test_the_summary_gives_medians_spreads_and_ratios_to_plain_celery() -> None:
    runs = [
        figures("celery", 1, 400),
        figures("celery", 2, 500),
        figures("celery", 3, 600),
        figures("conveyor", 1, 200, bulk=3000),
        figures("conveyor", 2, 250, bulk=2000),
        figures("conveyor", 3, 300, bulk=4000),
    ]
    rows = {row["system"]: row for row in summarise(runs)}
    assert rows["celery"]["drain"] == {"median": 500, "min": 400, "max": 600}
    assert rows["conveyor"]["drain_vs_celery"] == pytest.approx(0.5)
    # Celery has no bulk call: Conveyor's bulk is compared with Celery's one-by-one loop.
    assert rows["conveyor"]["enqueue_bulk_vs_celery"] == pytest.approx(3000 / 1000)
    assert rows["celery"]["enqueue_bulk"] is None
    table = render({"summary": list(rows.values())})
    conveyor = "| redis | noop | Conveyor (every promise on) | 500 (400–600) | 3,000 (2,000–4,000) "  # noqa: RUF001
    assert conveyor + "| 250 (200–300) | 0.50 |" in table  # noqa: RUF001
