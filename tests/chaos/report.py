"""The full tier's chaos report: one JSON file per run, then one table for docs/chaos.md.

`tests/chaos/test_scenarios.py` saves each full-size run's `--json` report under
test-artifacts/full/; ``python -m tests.chaos.report`` (run by ``scripts/test --full``)
gathers them into test-artifacts/full/chaos.json and chaos.md, in the column order of
the "Full-size figures" table in docs/chaos.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "test-artifacts" / "full"

FULL_JOBS = 2000
FULL_SEED = 2026
FULL_TIMEOUT_S = 1800
"""Size, seed and bound of each full-size run (as for the figures in docs/chaos.md)."""

COLUMNS = (
    "scenario",
    "broker",
    "jobs",
    "faults injected",
    "succeeded",
    "dead",
    "lost",
    "duplicated effects",
    "retries",
    "lost attempts recovered",
    "p50 to terminal (s)",
    "p95 (s)",
    "run (s)",
    "invariants",
)
SCENARIO_ORDER = (
    "worker-kill",
    "worker-term",
    "leader-kill",
    "broker-restart",
    "db-outage",
    "network",
    "poison",
    "flaky",
)


def save_report(report: dict[str, Any]) -> Path:
    """Write one run's report where the table is made from; returns the file."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = REPORTS / f"chaos-{report['scenario']}-{report['broker']}.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path


def row(report: dict[str, Any]) -> str:
    faults = ", ".join(f"{kind} {n}" for kind, n in sorted(report["faults"].items()) if n)
    measured = ", ".join(
        f"{name} {value}" for name, value in sorted(report.get("figures", {}).items())
    )
    if measured:  # what the scenario measured of its faults (recovery seconds, ...)
        faults = f"{faults}; {measured}" if faults else measured
    cells = [
        report["scenario"],
        report["broker"],
        report["jobs"],
        faults or "—",
        report["succeeded"],
        report["dead"],
        report["lost"],
        report["duplicated_effects"],
        report["retries"],
        report["lost_attempts"],
        report["p50_s"],
        report["p95_s"],
        report["elapsed_s"],
        "hold" if report["ok"] else f"violated: {'; '.join(report['violations'])}",
    ]
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def order(report: dict[str, Any]) -> tuple[int, int]:
    scenario = str(report["scenario"])
    known = SCENARIO_ORDER.index(scenario) if scenario in SCENARIO_ORDER else len(SCENARIO_ORDER)
    return (0 if report["broker"] == "redis" else 1, known)


def commit() -> str:
    found = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return found.stdout.strip() or "unknown"


def write_table() -> Path:
    """Gather the saved runs into chaos.json and chaos.md; returns the markdown file."""
    reports = sorted(
        (json.loads(path.read_text()) for path in REPORTS.glob("chaos-*.json")), key=order
    )
    (REPORTS / "chaos.json").write_text(json.dumps(reports, indent=2) + "\n")
    held = sum(report["ok"] for report in reports)
    jobs = sum(report["jobs"] for report in reports)
    lines = [
        f"Runs of {FULL_JOBS:,} jobs (seed {FULL_SEED}), from commit {commit()}, "
        f"{datetime.now(UTC):%Y-%m-%d}, by `scripts/test --full`:",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *(row(report) for report in reports),
        "",
        f"{held} of {len(reports)} runs hold every invariant ({jobs:,} jobs, "
        f"lost = {sum(r['lost'] for r in reports)}, "
        f"duplicated effects = {sum(r['duplicated_effects'] for r in reports)}).",
    ]
    path = REPORTS / "chaos.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    if not any(REPORTS.glob("chaos-*.json")):
        sys.exit(f"no full-size chaos reports in {REPORTS}")
    print(write_table())
