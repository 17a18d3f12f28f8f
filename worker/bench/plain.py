"""Plain Celery for ``conveyor bench``: default settings, one task, no Conveyor code.

``celery -A conveyor.worker.bench.plain worker -Q QUEUE -c 2`` runs :data:`app` with
Celery's defaults, except results ignored (nothing reads them; Conveyor keeps results in
its ledger). The broker comes from ``BENCH_BROKER_URL``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from conveyor.worker.bench.probe import record

TASK = "bench.job"

app = Celery("bench_plain", broker=os.environ.get("BENCH_BROKER_URL"), set_as_current=False)
app.conf.task_ignore_result = True


def bench_job(**payload: Any) -> None:
    """One benchmark job (:func:`~worker.bench.probe.record`)."""
    record(payload)


app.task(name=TASK)(bench_job)
