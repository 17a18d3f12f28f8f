"""Latency of ``POST /v1/jobs`` at a fixed request rate, from a separate process.

What it does, in one run:

1. creates a PostgreSQL database ``bench_api_<random>`` and migrates it (the ledger);
2. starts ``conveyor api`` on a free loopback port, RabbitMQ as broker, jobs going to the
   queue ``bench-http`` (nothing consumes it: this measures enqueueing only), and makes an
   ``enqueue`` key with ``conveyor apikey create``;
3. drives ``POST /v1/jobs`` open-loop: request *i* is sent at ``start + i / rate``
   whether or not earlier ones have answered (httpx, async, one connection pool), for a
   short warm-up and then the measured ``--duration``. Latency is counted from the moment
   a request was *due*, so a client or server that falls behind shows up in the figures
   instead of silently lowering the rate (no coordinated omission);
4. reports p50/p95/p99/max latency, the achieved rate and the errors, then stops the
   server, deletes the queue and drops the database.

Run from the repository root: ``.venv/bin/python -m ops.bench.http_enqueue --help``.
The target (docs: DESIGN.md) is p95 under 20 ms at 200 requests/s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psycopg
from kombu import Connection

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").is_dir() else sys.executable
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = "bench-http"
STARTUP_TIMEOUT_S = 30.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Result:
    rate_per_s: float
    duration_s: float
    sent: int
    accepted: int
    errors: int
    achieved_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    late_sends: int
    """Requests the client itself sent more than 5 ms after they were due."""


def percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    index = min(len(sorted_ms) - 1, max(0, round(q / 100 * len(sorted_ms) + 0.5) - 1))
    return sorted_ms[index]


# -- the ledger and the server ---------------------------------------------------------------


@contextmanager
def database() -> Iterator[str]:
    """A fresh, migrated ledger database, dropped afterwards."""
    name = f"bench_api_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        log(f"dropped database {name}")


def conveyor(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [PYTHON, "-m", "conveyor.worker.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"conveyor {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def api_server(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """``conveyor api`` on a free port; yields its base URL, SIGTERMs it afterwards."""
    port = free_port()
    with log_path.open("wb") as output:
        server = subprocess.Popen(
            [PYTHON, "-m", "conveyor.worker.cli", "api", "--port", str(port), "--no-access-log"],
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise SystemExit(f"conveyor api exited:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("conveyor api did not become ready")
            time.sleep(0.1)
        log(f"conveyor api ready on {base_url} (pid {server.pid})")
        yield base_url
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def delete_queue(broker_url: str) -> None:
    with Connection(broker_url) as connection:
        connection.default_channel.queue_delete(QUEUE)
        if broker_url.startswith("amqp"):  # and the exchange of the same name Celery made
            connection.default_channel.exchange_delete(QUEUE)
    log(f"deleted queue {QUEUE}")


# -- the load --------------------------------------------------------------------------------


async def drive(
    base_url: str,
    token: str,
    *,
    rate_per_s: float,
    duration_s: float,
    keyed: bool,
    batch: int = 0,
) -> tuple[list[float], int, int, int]:
    """Open-loop POSTs for ``duration_s``: (latencies in ms, accepted, errors, late sends)."""
    total = int(rate_per_s * duration_s)
    latencies: list[float] = []
    accepted = errors = late = 0
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, limits=limits, headers=headers) as client:

        async def one(index: int, due: float) -> None:
            nonlocal accepted, errors, late
            if time.perf_counter() - due > 0.005:
                late += 1
            body: dict[str, object] = {"task": "demo.work", "payload": {"n": index}, "queue": QUEUE}
            extra = {"Idempotency-Key": f"bench-{uuid.uuid4().hex}"} if keyed else {}
            path, status = "/v1/jobs", 202
            if batch:  # POST /v1/jobs:batch with `batch` such jobs
                body, path, status = {"jobs": [body] * batch}, "/v1/jobs:batch", 200
            try:
                response = await client.post(path, json=body, headers=extra, timeout=30)
                ok = response.status_code == status
                if ok and batch:
                    ok = response.json()["accepted"] == batch
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - due) * 1000)
            if ok:
                accepted += 1
            else:
                errors += 1

        start = time.perf_counter() + 0.05
        tasks = []
        for index in range(total):
            due = start + index / rate_per_s
            pause = due - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            tasks.append(asyncio.create_task(one(index, due)))
        await asyncio.gather(*tasks)
    return latencies, accepted, errors, late


def measure(base_url: str, token: str, args: argparse.Namespace) -> Result:
    def load(duration_s: float) -> tuple[list[float], int, int, int]:
        return asyncio.run(
            drive(
                base_url,
                token,
                rate_per_s=args.rate,
                duration_s=duration_s,
                keyed=args.keyed,
                batch=args.batch,
            )
        )

    if args.warmup > 0:
        log(f"warm-up: {args.warmup:g}s at {args.rate:g}/s (not counted)")
        load(args.warmup)
    log(f"measuring: {args.duration:g}s at {args.rate:g}/s")
    started = time.perf_counter()
    latencies, accepted, errors, late = load(args.duration)
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return Result(
        rate_per_s=args.rate,
        duration_s=args.duration,
        sent=len(latencies),
        accepted=accepted,
        errors=errors,
        achieved_per_s=accepted / elapsed,
        p50_ms=percentile(ordered, 50),
        p95_ms=percentile(ordered, 95),
        p99_ms=percentile(ordered, 99),
        max_ms=ordered[-1] if ordered else float("nan"),
        late_sends=late,
    )


def report(result: Result, target_p95_ms: float, batch: int = 0) -> str:
    verdict = "meets" if result.p95_ms < target_p95_ms else "MISSES"
    return "\n".join(
        [
            f"POST /v1/jobs, {result.rate_per_s:g} req/s for {result.duration_s:g}s "
            f"(PostgreSQL ledger, RabbitMQ broker, {platform.python_implementation()} "
            f"{platform.python_version()}, {os.cpu_count()} CPUs)",
            "",
            "| requests | accepted | errors | achieved req/s | p50 ms | p95 ms | p99 ms | max ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {result.sent} | {result.accepted} | {result.errors} "
            f"| {result.achieved_per_s:.1f} | {result.p50_ms:.1f} | {result.p95_ms:.1f} "
            f"| {result.p99_ms:.1f} | {result.max_ms:.1f} |",
            "",
            f"p95 {verdict} the {target_p95_ms:g} ms target; "
            f"{result.late_sends} request(s) left the client more than 5 ms late.",
            *(
                [f"batches of {batch} jobs: {result.achieved_per_s * batch:,.0f} jobs/s."]
                if batch
                else []
            ),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--keyed", action="store_true", help="send an Idempotency-Key each")
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="POST /v1/jobs:batch with this many jobs per request instead (jobs/s = req/s * N)",
    )
    parser.add_argument("--target-p95-ms", type=float, default=20.0)
    parser.add_argument("--broker-url", default=AMQP_URL)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="keep the server up this many seconds before the load (to attach a profiler)",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp, database() as ledger_url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
            "CONVEYOR_DATABASE_URL": ledger_url,
            "CONVEYOR_BROKER_URL": args.broker_url,
            "CONVEYOR_DATA_DIR": str(Path(tmp) / "var"),
            "CONVEYOR_LOG_LEVEL": "WARNING",
            "CONVEYOR_TASK_MODULES": "conveyor.tasks.demo",  # the job it enqueues
            # One key sends every request: lift the per-key limit out of the way.
            "CONVEYOR_API_RATE_LIMIT_PER_S": str(max(10_000.0, args.rate * 10)),
        }
        conveyor(["migrate"], env)
        created = json.loads(
            conveyor(["apikey", "create", "bench", "--scope=enqueue", "--json"], env)
        )
        try:
            with api_server(env, Path(tmp) / "api.log") as base_url:
                if args.hold:
                    log(f"holding {args.hold:g}s before the load")
                    time.sleep(args.hold)
                result = measure(base_url, created["token"], args)
        finally:
            delete_queue(args.broker_url)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(report(result, args.target_p95_ms, args.batch))


if __name__ == "__main__":
    main()
