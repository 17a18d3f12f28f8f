"""The ledger at scale: the console's queries and the job path with millions of jobs.

A scratch database ``conveyor_scale_<random>`` is created, migrated with Conveyor's own
migrations (``worker.migrate``), and the job path (:meth:`JobPath.claim` and
:meth:`JobPath.succeed` on a few thousand fresh queued jobs) is timed on the empty ledger.
Then ``--jobs`` realistic jobs are written with ``INSERT … SELECT FROM generate_series``
(30 days of history, mostly succeeded, some dead, cancelled and retried, attempts rows,
payloads with a ``customer_id``; the secondary indexes are dropped for the fill and built
again from their own definitions, which is several times faster than maintaining them row
by row), the tables are vacuumed and analyzed, and every console query is timed
``--runs`` times (p50/p95/p99), then the job path again on the full ledger, then one
retention pass (:mod:`worker.ledger.retention`) over an hour's worth of expired jobs.
The database is dropped at the end unless ``--keep``. From the repository root::

    .venv/bin/python -m ops.bench.ledger_scale --jobs 1000000
    .venv/bin/python -m ops.bench.ledger_scale --jobs 10000000 --explain
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from alembic import command
from sqlalchemy import select
from sqlalchemy.dialects import postgresql

from conveyor.worker.api.pagination import JobFilter, PayloadMatch, page
from conveyor.worker.ledger import Ledger, NewJob
from conveyor.worker.ledger.dead import DeadFilter
from conveyor.worker.ledger.retention import RetentionPolicy, prune
from conveyor.worker.migrate import alembic_config, upgrade
from conveyor.worker.models import Job, utcnow
from conveyor.worker.operations.stats import queue_stats
from ops.bench.throughput import PG_URL, log, machine

DAYS = 30
TASKS = (
    # (task, queue, share of jobs in percent)
    ("webhooks.deliver", "webhooks", 35),
    ("email.send", "default", 25),
    ("search.index", "default", 12),
    ("images.resize", "media", 10),
    ("billing.charge", "billing", 8),
    ("sms.send", "default", 5),
    ("reports.build", "reports", 4),
    ("exports.csv", "reports", 1),
)
CUSTOMERS = 20_000
CHUNK = 500_000
"""Rows per INSERT of the fill: one transaction each, so progress shows."""


def percentiles(samples_ms: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 of ``samples_ms`` (nearest rank; needs at least one sample)."""
    ordered = sorted(samples_ms)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return rank(50), rank(95), rank(99)


def task_case(column: str) -> str:
    """A SQL CASE that maps ``column`` (0-99) onto a task name (or its queue) by share."""
    return _case(column, 0)


def queue_case(column: str) -> str:
    return _case(column, 1)


def _case(column: str, field: int) -> str:
    arms, upper = [], 0
    for spec in TASKS:
        upper += spec[2]
        arms.append(f"WHEN {column} < {upper} THEN '{spec[field]}'")
    assert upper == 100, "task shares must add up to 100"
    return f"CASE {' '.join(arms)} END"


def fill_sql(start: int, stop: int, total: int) -> str:
    """One chunk of the fill: jobs ``start`` to ``stop`` of ``total``, oldest first.

    State by ``h`` (0-999, a hash of the row number): 96 % succeeded (4 % of them after a
    retry), 1.5 % dead (a tenth of them replayed), 1.5 % cancelled, spread over the last
    :data:`DAYS` days in creation order; the newest 0.02 % are the live ones (queued,
    scheduled, running): about the last nine minutes.
    """
    live = total - max(total // 5000, 10)
    # Every value below is an int from this script: nothing from outside is interpolated.
    return f"""
    INSERT INTO conveyor_jobs (id, task, queue, state, attempts, max_attempts, idempotency_key,
        payload, priority, result, error_type, error_message, error_traceback, dead_reason,
        worker, created_at, updated_at, run_at, started_at, finished_at, lease_expires_at,
        replayed_as)
    SELECT id, {task_case("t")}, {queue_case("t")}, state,
        CASE WHEN state = 'dead' THEN 3 WHEN state IN ('cancelled', 'queued', 'scheduled') THEN 0
             WHEN h % 25 = 0 THEN 2 ELSE 1 END,
        3,
        CASE WHEN g % 3 = 0 THEN 'order-' || g END,
        jsonb_build_object('customer_id', (g * 7919) % {CUSTOMERS}, 'order_id', g,
            'url', 'https://hooks.example.com/' || (g % 977) || '/events',
            'note', repeat('x', 20 + (g % 40)::int)),
        NULL,
        CASE WHEN state = 'succeeded' THEN '{{"status": 200}}'::jsonb END,
        CASE WHEN state = 'dead' THEN (ARRAY['httpx.ConnectTimeout', 'httpx.HTTPStatusError',
            'builtins.ValueError', 'tasks.billing.CardDeclined'])[1 + h % 4] END,
        CASE WHEN state = 'dead' THEN 'failed with status ' || (500 + h % 4) END,
        CASE WHEN state = 'dead' THEN repeat('  File "tasks/x.py", line 1, in run' || chr(10), 8)
        END,
        CASE WHEN state = 'dead' THEN (ARRAY['exhausted', 'fatal'])[1 + h % 2] END,
        'celery@worker-' || (g % 8),
        created_at,
        created_at + interval '2 seconds',
        CASE WHEN state = 'scheduled' THEN now() + interval '1 minute' END,
        CASE WHEN state NOT IN ('queued', 'scheduled', 'cancelled')
             THEN created_at + interval '20 ms' END,
        CASE WHEN state IN ('succeeded', 'dead', 'cancelled')
             THEN created_at + (h % 2000) * interval '1 ms' + interval '30 ms' END,
        CASE WHEN state = 'running' THEN now() + interval '10 seconds' END,
        CASE WHEN state = 'dead' AND h % 10 = 0 THEN 'replayed-' || g END
    FROM (
        SELECT g, h, abs(hashint8(g # 1431655765)::bigint) % 100 AS t,
            md5(g::text || '{total}')::uuid::text AS id,
            now() - interval '{DAYS} days' * (1 - g::float8 / {total})
                + (g % 997) * interval '1 ms' AS created_at,
            CASE WHEN g > {live} THEN (ARRAY['queued', 'scheduled', 'running'])[1 + g % 3]
                 WHEN h < 960 THEN 'succeeded'
                 WHEN h < 975 THEN 'dead'
                 ELSE 'cancelled' END AS state
        FROM (SELECT g, abs(hashint8(g)::bigint) % 1000 AS h
              FROM generate_series({start}::bigint, {stop - 1}) AS g) AS numbered
    ) AS rows
    """  # noqa: S608


ATTEMPTS_SQL = """
INSERT INTO conveyor_job_attempts (job_id, attempt, outcome, started_at, finished_at, delay_s,
    error_type, error_message)
SELECT id, a,
    CASE WHEN state = 'dead' AND a = attempts THEN 'dead' ELSE 'scheduled' END,
    created_at + (a - 1) * interval '10 seconds',
    created_at + (a - 1) * interval '10 seconds' + interval '15 ms',
    CASE WHEN state = 'dead' AND a = attempts THEN NULL ELSE 10.0 END,
    'httpx.ConnectTimeout', 'connect timed out'
FROM conveyor_jobs, generate_series(1, attempts - (state = 'succeeded')::int) AS a
WHERE state = 'dead' OR (state = 'succeeded' AND attempts > 1)
"""

AUDIT_SQL = """
INSERT INTO conveyor_audit (at, actor, action, filters, job_ids, count)
SELECT now() - g * interval '1 minute', 'user:ops', (ARRAY['replay', 'purge'])[1 + g % 2],
    '{"task": "webhooks.deliver"}'::jsonb, '["a", "b"]'::jsonb, 2
FROM generate_series(1, 20000) AS g
"""


def secondary_indexes(connection: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """``(name, CREATE INDEX …)`` of the jobs' and attempts' indexes that no constraint owns."""
    rows = connection.execute(
        """
        SELECT i.relname, pg_get_indexdef(i.oid)
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_class t ON t.oid = x.indrelid
        WHERE t.relname IN ('conveyor_jobs', 'conveyor_job_attempts')
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid)
        ORDER BY i.relname
        """
    ).fetchall()
    return [(name, definition) for name, definition in rows]


def fill(url: str, jobs: int) -> dict[str, float]:
    """Write ``jobs`` jobs, their attempts and an audit log; seconds per step."""
    took: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as connection:
        indexes = secondary_indexes(connection)
        for name, _ in indexes:
            connection.execute(f'DROP INDEX "{name}"')
        started = time.perf_counter()
        for start in range(1, jobs + 1, CHUNK):
            connection.execute(fill_sql(start, min(start + CHUNK, jobs + 1), jobs).encode())
            log(f"fill: {min(start + CHUNK - 1, jobs):,} of {jobs:,} jobs")
        connection.execute(ATTEMPTS_SQL.encode())
        connection.execute(AUDIT_SQL.encode())
        took["fill_s"] = time.perf_counter() - started
        started = time.perf_counter()
        connection.execute("SET maintenance_work_mem = '512MB'")
        for name, definition in indexes:
            connection.execute(definition.encode())
            log(f"fill: index {name} built")
        took["index_s"] = time.perf_counter() - started
        started = time.perf_counter()
        connection.execute("VACUUM (ANALYZE) conveyor_jobs")
        connection.execute("VACUUM (ANALYZE) conveyor_job_attempts")
        connection.execute("VACUUM (ANALYZE) conveyor_audit")
        took["vacuum_s"] = time.perf_counter() - started
    return took


def sizes(url: str) -> dict[str, str]:
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) FROM pg_class "
            "WHERE relname IN ('conveyor_jobs', 'conveyor_job_attempts') "
            "UNION ALL SELECT 'database', pg_size_pretty(pg_database_size(current_database()))"
        ).fetchall()
    return {name: size for name, size in rows}


# -- the queries ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """What the timed queries look for: values that exist in the filled ledger."""

    job_id: str
    dead_job_id: str


def pick_sample(ledger: Ledger) -> Sample:
    with ledger.session() as session:
        dead = session.scalar(
            select(Job.id).where(Job.state == "dead").order_by(Job.created_at.desc()).limit(1)
        )
        middle = session.scalar(  # among the newest: the retention pass spares it
            select(Job.id)
            .where(Job.state == "succeeded", Job.attempts == 2)
            .order_by(Job.created_at.desc())
            .limit(1)
        )
    assert dead is not None, "the fill wrote no dead job"
    assert middle is not None, "the fill wrote no retried job"
    return Sample(job_id=middle, dead_job_id=dead)


def job_list(ledger: Ledger, where: JobFilter) -> int:
    rows, _ = page(ledger, where, cursor=None, limit=50)
    return len(rows)


CUSTOMER = PayloadMatch(("customer_id",), 42)
LISTS = {
    "job list, first page": JobFilter(),
    "job list, state=dead": JobFilter(state="dead"),
    "job list, state=queued": JobFilter(state="queued"),
    "job list, queue=reports": JobFilter(queue="reports"),
    "job list, task+state+payload": JobFilter(
        state="succeeded", task="webhooks.deliver", payload=CUSTOMER
    ),
    "job list, payload only": JobFilter(payload=CUSTOMER),
    "job list, idempotency key": JobFilter(idempotency_key="order-300000"),
    "job list, last 24 h of one task": JobFilter(
        task="billing.charge", created_after=utcnow() - timedelta(days=1)
    ),
}
"""The job list's filters the run times, with the console's own :class:`JobFilter`."""


def console_queries(ledger: Ledger, sample: Sample) -> dict[str, Callable[[], Any]]:
    """Name -> a call that runs one console query: the console's own functions
    (``worker/console/queries.py``), the API's job list (:func:`page`) and ``queue_stats``."""
    from conveyor.worker.console import queries as console

    found: dict[str, Callable[[], Any]] = {
        name: functools.partial(job_list, ledger, where) for name, where in LISTS.items()
    }
    found |= {
        "job page (job + attempts)": lambda: console.job_detail(ledger, sample.job_id),
        "dead job page": lambda: console.job_detail(ledger, sample.dead_job_id),
        "overview: chart (throughput)": lambda: console.throughput(ledger),
        "overview: queue_stats": lambda: queue_stats(ledger),
        "overview: finished_per_minute": lambda: console.finished_per_minute(ledger),
        "dead-letter groups": lambda: console.dead_groups(ledger, DeadFilter()),
        "audit log": lambda: console.audit_entries(ledger),
    }
    return found


def time_queries(queries: dict[str, Callable[[], Any]], runs: int) -> dict[str, list[float]]:
    """Milliseconds of each query over ``runs`` rounds, the queries interleaved."""
    for call in queries.values():  # warm: plans cached, the connection open
        call()
    samples: dict[str, list[float]] = {name: [] for name in queries}
    for _ in range(runs):
        for name, call in queries.items():
            started = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - started) * 1e3)
    return samples


def explain_statements(sample: Sample) -> dict[str, tuple[str, dict[str, Any]]]:
    """The SQL of each console query as PostgreSQL runs it, with its parameters, for
    ``EXPLAIN``: the lists compiled from :data:`LISTS`, the rest as the console writes them
    (``worker/console/queries.py``, ``worker/operations/stats.py``)."""
    dialect = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, where in LISTS.items():
        compiled = where.query().limit(51).compile(dialect=dialect)
        found[name] = str(compiled), dict(compiled.params)
    since = {"since": utcnow() - timedelta(minutes=59)}
    job = {"job_id": sample.job_id}
    found |= {
        "job page: job": ("SELECT * FROM conveyor_jobs WHERE id = %(job_id)s", job),
        "job page: attempts": (
            "SELECT * FROM conveyor_job_attempts WHERE job_id = %(job_id)s ORDER BY attempt",
            job,
        ),
        "overview: chart, jobs": (
            "SELECT date_trunc('minute', finished_at), state, count(*) FROM conveyor_jobs "
            "WHERE state IN ('succeeded', 'dead') AND finished_at >= %(since)s GROUP BY 1, 2",
            since,
        ),
        "overview: chart, retries": (
            "SELECT date_trunc('minute', finished_at), count(*) FROM conveyor_job_attempts "
            "WHERE outcome = 'scheduled' AND finished_at >= %(since)s GROUP BY 1",
            since,
        ),
        "overview: queue_stats": (
            "SELECT queue, state, count(*), min(updated_at) FROM conveyor_jobs "
            "WHERE state IN ('queued', 'running', 'scheduled') "
            "OR (state = 'dead' AND replayed_as IS NULL) GROUP BY queue, state",
            {},
        ),
        "overview: relay lag": (
            "SELECT min(run_at) FROM conveyor_jobs WHERE state = 'scheduled' AND run_at <= now()",
            {},
        ),
        "overview: finished_per_minute": (
            "SELECT queue, count(*) FROM conveyor_jobs WHERE state IN ('succeeded', 'dead') "
            "AND finished_at >= now() - interval '5 minutes' GROUP BY queue",
            {},
        ),
        "dead-letter groups": (
            "SELECT task, error_type, count(*), min(finished_at), max(finished_at) "
            "FROM conveyor_jobs WHERE state = 'dead' AND replayed_as IS NULL "
            "GROUP BY task, error_type ORDER BY count(*) DESC, task LIMIT 200",
            {},
        ),
        "audit log": ("SELECT * FROM conveyor_audit ORDER BY at DESC LIMIT 100", {}),
    }
    return found


def explain(url: str, statements: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, str]:
    plans = {}
    with psycopg.connect(url, autocommit=True) as connection:
        for name, (sql, params) in statements.items():
            query = f"EXPLAIN (ANALYZE, BUFFERS) {sql}"
            rows = connection.execute(query.encode(), params or None).fetchall()
            plans[name] = "\n".join(row[0] for row in rows)
    return plans


# -- the job path ---------------------------------------------------------------------------


def job_path(ledger: Ledger, jobs: int) -> dict[str, list[float]]:
    """Milliseconds of each create, claim and success of ``jobs`` fresh jobs (all created
    first, as a backlog, then each claimed and succeeded in turn, as a worker does)."""
    batch = [
        NewJob(
            id=str(uuid.uuid4()),
            task="webhooks.deliver",
            queue="webhooks",
            payload={"customer_id": n % CUSTOMERS, "order_id": n},
            max_attempts=3,
        )
        for n in range(jobs)
    ]
    creates, claims, successes = [], [], []
    for job in batch:
        started = time.perf_counter()
        ledger.create(job)
        creates.append((time.perf_counter() - started) * 1e3)
    for job in batch:
        started = time.perf_counter()
        claim = ledger.claim(job.id, lease_s=60, worker="bench", foreign=job)
        claimed = time.perf_counter()
        assert claim.attempt is not None
        assert ledger.succeed(job.id, claim.attempt, {"status": 200})
        claims.append((claimed - started) * 1e3)
        successes.append((time.perf_counter() - claimed) * 1e3)
    return {"create": creates, "claim": claims, "succeed": successes}


def index_cost(
    url: str, ledger: Ledger, jobs: int, rounds: int = 2
) -> dict[str, dict[str, list[float]]]:
    """The job path on the empty ledger with the indexes before migration 0010 and with
    them, alternated ``rounds`` times (downgrading in between) so drift touches both."""
    figures: dict[str, dict[str, list[float]]] = {}
    config = alembic_config(url)
    for _ in range(rounds):
        for revision in ("0009", "0010"):
            if revision == "0009":
                command.downgrade(config, "0009")
            else:
                command.upgrade(config, "0010")
            ledger.dispose()  # the direct connections' prepared statements name old indexes
            done = job_path(ledger, jobs)
            for step, values in done.items():
                figures.setdefault(revision, {}).setdefault(step, []).extend(values)
    return figures


def time_retention(
    ledger: Ledger, url: str, *, batch: int, max_batches: int | None = None, days: float = 0
) -> dict[str, float]:
    """One pruning pass. With ``days=0``, the cutoff an hour past the oldest finished job:
    what a relay that was an hour behind deletes. Otherwise the ``days`` cutoff of a newly
    switched-on retention, and the pass stopped after ``max_batches`` full statements."""
    with psycopg.connect(url, autocommit=True) as connection:
        oldest = connection.execute(
            "SELECT min(finished_at) FROM conveyor_jobs WHERE state IN ('succeeded', 'cancelled')"
        ).fetchone()
    assert oldest is not None
    assert oldest[0] is not None
    now = utcnow()
    age_s = days * 86_400 if days else (now - oldest[0]).total_seconds() - 3600
    policy = RetentionPolicy(finished_s=age_s, dead_s=DAYS * 86_400.0)
    started = time.perf_counter()
    done = prune(ledger, policy, batch=batch, max_batches=max_batches or 1_000_000, now=now)
    took = time.perf_counter() - started
    return {
        "rows": float(done.total),
        "batches": float(done.batches),
        "seconds": took,
        "ms_per_batch": took / max(done.batches, 1) * 1e3,
    }


# -- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    name = f"conveyor_scale_{uuid.uuid4().hex[:8]}"
    admin_url = PG_URL
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    sa_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    log(f"database {name}")
    try:
        upgrade(sa_url)
        ledger = Ledger(sa_url)
        revisions = index_cost(sa_url, ledger, args.path_jobs, args.path_rounds)
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("TRUNCATE conveyor_jobs CASCADE")
        log("job path on the empty ledger, before and after 0010: done")
        took = fill(url, args.jobs)
        log(f"filled: {took}")
        sample = pick_sample(ledger)
        queries = time_queries(console_queries(ledger, sample), args.runs)
        full = job_path(ledger, args.path_jobs)
        log("job path on the full ledger: done")
        retention = time_retention(ledger, url, batch=args.batch)
        backlog = time_retention(ledger, url, batch=args.batch, max_batches=100, days=7)
        report(args, machine(), took, sizes(url), queries, revisions, full, retention)
        print(
            f"retention backlog (7-day cutoff, first 100 full statements): "
            f"{backlog['rows']:,.0f} rows in {backlog['seconds']:.2f} s, "
            f"{backlog['ms_per_batch']:.1f} ms a batch, "
            f"{backlog['rows'] / backlog['seconds']:,.0f} rows/s"
        )
        if args.explain:
            for title, plan in explain(url, explain_statements(sample)).items():
                print(f"\n#### {title}\n\n```\n{plan}\n```")
        ledger.dispose()
    finally:
        if args.keep:
            log(f"kept: {url}")
        else:
            with psycopg.connect(admin_url, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def report(
    args: argparse.Namespace,
    host: dict[str, Any],
    took: dict[str, float],
    size: dict[str, str],
    queries: dict[str, list[float]],
    revisions: dict[str, dict[str, list[float]]],
    full: dict[str, list[float]],
    retention: dict[str, float],
) -> None:
    print(f"## Ledger at {args.jobs:,} jobs, {host['date']}, {host['cpus']} CPUs ({host['host']})")
    fill_s, index_s, vacuum_s = took["fill_s"], took["index_s"], took["vacuum_s"]
    print(f"\nfill {fill_s:.0f} s, indexes {index_s:.0f} s, vacuum+analyze {vacuum_s:.0f} s; ")
    print(", ".join(f"{key} {value}" for key, value in size.items()))
    print(f"\n| query ({args.runs} runs) | p50 ms | p95 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for name, samples in queries.items():
        p50, p95, p99 = percentiles(samples)
        print(f"| {name} | {p50:.1f} | {p95:.1f} | {p99:.1f} |")
    print(f"\n| job path ({args.path_jobs} jobs) | ledger | p50 ms | p95 ms | p99 ms | mean ms |")
    print("|---|---|---:|---:|---:|---:|")
    ledgers = (
        ("empty, indexes of 0009", revisions["0009"]),
        ("empty, indexes of 0010", revisions["0010"]),
        (f"{args.jobs:,} jobs, 0010", full),
    )
    for step in ("create", "claim", "succeed"):
        for label, figures in ledgers:
            p50, p95, p99 = percentiles(figures[step])
            mean = statistics.fmean(figures[step])
            print(f"| {step} | {label} | {p50:.2f} | {p95:.2f} | {p99:.2f} | {mean:.2f} |")
    rows, batches, seconds = retention["rows"], retention["batches"], retention["seconds"]
    print(
        f"\nretention pass (an hour of expired jobs): {rows:,.0f} rows in {batches:.0f} "
        f"batches of {args.batch}, {seconds:.2f} s, {retention['ms_per_batch']:.1f} ms a batch"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50, help="rounds of each query")
    parser.add_argument("--path-jobs", type=int, default=3000, help="jobs claimed+succeeded")
    parser.add_argument(
        "--path-rounds", type=int, default=2, help="rounds of the empty job path per revision"
    )
    parser.add_argument("--batch", type=int, default=1000, help="rows per pruning statement")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN (ANALYZE, BUFFERS)")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
