"""The small pure helpers of ``ops/bench/ledger_scale.py``: percentiles and the fill's shares."""

from __future__ import annotations

import importlib
import re
from typing import Any

import pytest

# Imported by name: mypy checks the packages, not the ops/ scripts (which are not typed
# to its strict mode), and would follow a plain import into them.
scale: Any = importlib.import_module("ops.bench.ledger_scale")
TASKS, fill_sql, percentiles = scale.TASKS, scale.fill_sql, scale.percentiles
queue_case, task_case = scale.queue_case, scale.task_case

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([5.0], (5.0, 5.0, 5.0)),
        ([float(n) for n in range(1, 101)], (50.0, 95.0, 99.0)),
        ([float(n) for n in range(100, 0, -1)], (50.0, 95.0, 99.0)),  # order does not matter
        ([1.0, 2.0, 3.0, 4.0], (2.0, 4.0, 4.0)),  # nearest rank: never between two samples
    ],
)
def test_percentiles_are_nearest_rank(samples: list[float], expected: tuple[float, ...]) -> None:
    assert percentiles(samples) == expected


def test_the_task_shares_cover_every_bucket_once() -> None:
    assert sum(share for _, _, share in TASKS) == 100
    arms = re.findall(r"WHEN t < (\d+) THEN '([^']+)'", task_case("t"))
    assert [int(upper) for upper, _ in arms] == sorted(int(upper) for upper, _ in arms)
    assert arms[-1][0] == "100"
    assert [name for _, name in arms] == [task for task, _, _ in TASKS]
    assert [name for _, name in re.findall(r"WHEN t < (\d+) THEN '([^']+)'", queue_case("t"))] == [
        queue for _, queue, _ in TASKS
    ]


def test_a_fill_chunk_names_its_rows_and_the_live_tail() -> None:
    sql = fill_sql(1, 500_001, 10_000_000)
    assert "generate_series(1::bigint, 500000)" in sql
    assert "WHEN g > 9998000 THEN" in sql  # the newest 0.02 % are queued, scheduled, running
