"""Conveyor's own Prometheus metrics: what Flower's do not say.

Counters and histograms are recorded by :func:`observe`, the first observer of the outcome
chain (:mod:`worker.outcomes`), from the events of the client, the runtime, the relay and
the dead-letter tools; the ledger gauges (depth by state, oldest-job age, relay
lag) are read from the ledger when Prometheus scrapes, by :class:`LedgerCollector`.

Celery's prefork pool runs jobs in child processes, so a worker serves its counters with
prometheus-client's multiprocess mode: :func:`use_multiprocess` must run in the worker's
main process before any job is counted (the children inherit it when they fork). Every
metric here carries labels, and prometheus-client makes a labelled child's storage on its
first ``.labels()`` call, which is why switching the value class at start-up is enough.

Names (all prefixed ``conveyor_``) are a public contract: the Grafana dashboard and the
alert rules in ``ops/`` use them, and ``docs/observability.md`` lists them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from conveyor.worker.outcomes import Event

if TYPE_CHECKING:
    from conveyor.worker.ledger import Ledger
    from conveyor.worker.outcomes import JobEvent

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LEDGER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

ENQUEUED = Counter(
    "conveyor_jobs_enqueued", "Jobs accepted into the ledger by a producer.", ["task", "queue"]
)
STARTED = Counter("conveyor_jobs_started", "Attempts claimed by a worker.", ["task", "queue"])
SUCCEEDED = Counter("conveyor_jobs_succeeded", "Jobs that succeeded.", ["task", "queue"])
RETRIED = Counter(
    "conveyor_jobs_retried", "Failed attempts scheduled for a retry.", ["task", "queue"]
)
DEAD_LETTERED = Counter(
    "conveyor_jobs_dead_lettered",
    "Jobs dead-lettered, by reason (fatal, exhausted, invalid_payload, or a poison reason).",
    ["task", "queue", "reason"],
)
REPLAYED = Counter("conveyor_jobs_replayed", "Dead jobs replayed as new jobs.", ["task", "queue"])
RUN_SECONDS = Histogram(
    "conveyor_job_run_seconds",
    "Time one attempt spent in the job's function, by outcome (succeeded, failed).",
    ["task", "queue", "outcome"],
    buckets=RUN_BUCKETS,
)
LEDGER_SECONDS = Histogram(
    "conveyor_ledger_write_seconds",
    "Time of one ledger write, by operation (create, claim, succeed, fail, release).",
    ["operation"],
    buckets=LEDGER_BUCKETS,
)
RELAY_PUBLISHED = Counter(
    "conveyor_relay_published",
    "Messages the relay published (due retries and delays, outbox rows, stranded jobs).",
    ["queue"],
)
JOBS_PRUNED = Counter(
    "conveyor_jobs_pruned",
    "Finished jobs deleted by retention (their attempts with them), by state.",
    ["state"],
)
SCHEDULE_TICKS = Counter(
    "conveyor_schedule_ticks",
    "Periodic jobs' ticks by outcome: enqueued, duplicate (another relay wrote its job), "
    "skipped_overlap, missed, paused.",
    ["schedule", "outcome"],
)


DEFERRED = Counter(
    "conveyor_jobs_deferred",
    "Jobs a rate or concurrency limit held back before they started, by limit.",
    ["task", "queue", "limit"],
)

_COUNTED: dict[Event, Counter] = {
    Event.ENQUEUED: ENQUEUED,
    Event.CLAIMED: STARTED,
    Event.SUCCEEDED: SUCCEEDED,
    Event.RETRY: RETRIED,
    Event.REPLAYED: REPLAYED,
}


def observe(event: JobEvent) -> None:
    """Count ``event`` and record its timings (the outcome chain's metrics observer)."""
    if event.event is Event.DEAD:
        DEAD_LETTERED.labels(event.task, event.queue, str(event.reason)).inc()
    elif event.event is Event.PUBLISHED:
        RELAY_PUBLISHED.labels(event.queue).inc()
    elif event.event is Event.DEFERRED:
        DEFERRED.labels(event.task, event.queue, event.limit or "").inc()
    elif (counter := _COUNTED.get(event.event)) is not None:
        counter.labels(event.task, event.queue).inc()
    if event.run_s is not None:
        outcome = "succeeded" if event.event is Event.SUCCEEDED else "failed"
        RUN_SECONDS.labels(event.task, event.queue, outcome).observe(event.run_s)
    if event.ledger_s is not None and event.ledger_operation is not None:
        LEDGER_SECONDS.labels(event.ledger_operation).observe(event.ledger_s)


def use_multiprocess(directory: Path) -> None:
    """Count in files under ``directory`` (emptied first) so forked children's counts add up.

    Call once, in the process that will fork, before anything is counted.
    """
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def registry_for_scrape(ledger: Ledger | None = None, *, broker: Any = None) -> CollectorRegistry:
    """The registry a /metrics endpoint serves: this process family's counts, plus the
    ledger gauges when ``ledger`` is given, plus the unconsumed broker queues when
    ``broker`` (the app) is given."""
    registry = CollectorRegistry(auto_describe=False)
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Forward(REGISTRY))
    if ledger is not None:
        registry.register(LedgerCollector(ledger, broker=broker))
    return registry


class _Forward(Collector):
    """Serves another registry's metrics as part of this one."""

    def __init__(self, inner: CollectorRegistry) -> None:
        self.inner = inner

    def collect(self) -> Iterable[Metric]:
        return self.inner.collect()


class LedgerCollector(Collector):
    """Queue depth by state, oldest queued job's age, pauses and relay lag, read at scrape time.

    One grouped query (:func:`worker.operations.stats.queue_stats`) per scrape; with
    ``broker`` (the relay) the same queue list also gives the unconsumed broker queues.
    Several processes (relays, API replicas) may serve the same figures: aggregate them
    with ``max``.
    """

    def __init__(self, ledger: Ledger, *, broker: Any = None) -> None:
        self.ledger = ledger
        self.broker = broker
        """The app whose broker to ask for unconsumed queues (the relay), or None."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from conveyor.worker.operations.stats import queue_stats

        stats = queue_stats(self.ledger)
        jobs = GaugeMetricFamily(
            "conveyor_queue_jobs",
            "Jobs in the ledger by queue and state (queued, running, scheduled, dead).",
            labels=["queue", "state"],
        )
        age = GaugeMetricFamily(
            "conveyor_queue_oldest_job_age_seconds",
            "How long the oldest queued job of a queue has waited (0 when none waits).",
            labels=["queue"],
        )
        paused = GaugeMetricFamily(
            "conveyor_queue_paused",
            "1 while the queue is paused (`conveyor queues pause`), else 0.",
            labels=["queue"],
        )
        for queue in stats["queues"]:
            name = queue["name"]
            paused.add_metric([name], 1.0 if queue["paused"] else 0.0)
            for state, field in (
                ("queued", "depth"),
                ("running", "running"),
                ("scheduled", "scheduled"),
                ("dead", "dead"),
            ):
                jobs.add_metric([name, state], queue[field])
            age.add_metric([name], queue["oldest_queued_age_s"] or 0.0)
        yield jobs
        yield age
        yield paused
        if self.broker is not None:
            yield self._unconsumed(stats["queues"])
        yield GaugeMetricFamily(
            "conveyor_outbox_lag_seconds",
            "Age of the oldest scheduled or outbox job already due but not yet published.",
            value=stats["relay_lag_s"],
        )

    def _unconsumed(self, queues: list[dict[str, Any]]) -> GaugeMetricFamily:
        """``conveyor_broker_queue_unconsumed_messages{queue}`` from the same queue list
        (:mod:`worker.operations.broker`); no sample when the broker cannot be asked (the
        scrape still answers; readiness reports the outage)."""
        from conveyor.worker.operations.broker import unconsumed_of

        gauge = GaugeMetricFamily(
            "conveyor_broker_queue_unconsumed_messages",
            "Messages waiting on a broker queue no worker consumes (paused queues excepted).",
            labels=["queue"],
        )
        for queue in unconsumed_of(self.broker, queues) or []:
            gauge.add_metric([queue.name], queue.messages)
        return gauge
