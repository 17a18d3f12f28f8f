"""How long the console's pages take to answer over HTTP, on a ledger you give it.

Meant for a big ledger (``ops/bench/ledger_scale.py --keep`` fills one with millions of
jobs): it starts ``conveyor api`` on a free loopback port against that ledger (and the
local Redis as broker; no worker is needed), makes an ``admin`` API key with ``conveyor
apikey create``, signs in to the console, then loads each page ``--repeat`` times in turn,
one request at a time, and prints p50/p95/max per page as a Markdown table:

- the job list (first page, newest first), and its second page (through the cursor);
- a filtered list: one task, one state and one payload field;
- one job's page (a dead job with attempts);
- the overview (the page, and the fragment its script fetches every 5 s);
- the dead letters, grouped.

Run from the repository root::

    .venv/bin/python -m ops.bench.console_pages --ledger-url postgresql://.../conveyor_scale_x

The key it made stays in the ledger (revoked at the end).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from ops.bench.http_enqueue import api_server, conveyor, percentile

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def sample_rows(ledger_url: str) -> dict[str, Any]:
    """A dead job with attempts, and a (task, payload field) that a filter can ask for."""
    with psycopg.connect(ledger_url) as connection:
        dead = connection.execute(
            "SELECT job_id FROM conveyor_job_attempts ORDER BY id DESC LIMIT 1"
        ).fetchone()
        task = connection.execute(
            "SELECT task, payload FROM conveyor_jobs ORDER BY created_at DESC LIMIT 1"
        ).fetchone()
    if dead is None or task is None:
        raise SystemExit("the ledger needs jobs and at least one failed attempt")
    field, value = next(iter(task[1].items()))
    return {"job_id": dead[0], "task": task[0], "field": field, "value": value}


def sign_in(base_url: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=base_url, timeout=60, follow_redirects=True)
    form = client.get("/console/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert csrf is not None, form
    answer = client.post("/console/login", data={"csrf_token": csrf.group(1), "api_key": token})
    answer.raise_for_status()
    return client


def measure(client: httpx.Client, path: str, repeat: int) -> dict[str, float]:
    client.get(path).raise_for_status()  # warm: the first load also fills caches
    times_ms = []
    for _ in range(repeat):
        began = time.perf_counter()
        answer = client.get(path)
        times_ms.append((time.perf_counter() - began) * 1000)
        answer.raise_for_status()
    times_ms.sort()
    return {
        "p50_ms": percentile(times_ms, 50),
        "p95_ms": percentile(times_ms, 95),
        "max_ms": times_ms[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledger-url", required=True, help="a migrated ledger with jobs in it")
    parser.add_argument("--repeat", type=int, default=50, help="loads of each page (50)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    sample = sample_rows(args.ledger_url)
    data_dir = tempfile.mkdtemp(prefix="console-bench-")
    env = {
        **os.environ,
        "CONVEYOR_DATABASE_URL": args.ledger_url,
        "CONVEYOR_BROKER_URL": REDIS_URL,
        "CONVEYOR_DATA_DIR": data_dir,
        "CONVEYOR_LOG_LEVEL": "WARNING",
    }
    name = f"console-bench-{uuid.uuid4().hex[:8]}"
    token = json.loads(conveyor(["apikey", "create", name, "--scope", "admin", "--json"], env))[
        "token"
    ]
    try:
        with api_server(env, Path(data_dir) / "api.log") as base_url:
            client = sign_in(base_url, token)
            first = client.get("/console/jobs").text
            cursor = re.search(r'href="\?([^"]*cursor=[^"]+)"', first)
            payload = f"{sample['field']} = {json.dumps(sample['value'])}"
            pages = {
                "job list": "/console/jobs",
                "job list, page 2": "/console/jobs?" + html.unescape(cursor.group(1))
                if cursor
                else "/console/jobs",
                "filtered list": "/console/jobs?"
                + str(httpx.QueryParams(task=sample["task"], state="succeeded", payload=payload)),
                "job page": f"/console/jobs/{sample['job_id']}",
                "overview": "/console/",
                "overview (live part)": "/console/fragments/overview",
                "dead letters": "/console/dead-letters",
            }
            results = {label: measure(client, path, args.repeat) for label, path in pages.items()}
    finally:
        conveyor(["apikey", "revoke", name], env)
    if args.json:
        print(json.dumps({"pages": pages, "results": results}, indent=2))
        return
    print(f"| page ({args.repeat} loads each) | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|")
    for label, figures in results.items():
        print(
            f"| {label} | {figures['p50_ms']:.1f} | {figures['p95_ms']:.1f} "
            f"| {figures['max_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
