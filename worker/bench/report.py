"""What ``conveyor bench`` reports: medians with their spread, ratios to plain Celery, a
Markdown table, ``bench.json`` and ``bench.png``."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.worker.bench.systems import LABELS, SYSTEMS

if TYPE_CHECKING:
    from conveyor.worker.bench.runner import Figures

SUMMARY_FIGURES = (
    "enqueue_single",
    "enqueue_bulk",
    "drain",
    "startup_s",
    "peak_rss_mib",
    "cpu_us_per_job",
    "ledger_cpu_us_per_job",
)


def summarise(figures: list[Figures]) -> list[dict[str, Any]]:
    """Median, min and max of each figure per broker, kind and system; ratios to Celery."""
    rows: list[dict[str, Any]] = []
    groups = sorted({(f.broker, f.kind, f.system) for f in figures})
    for broker, kind, system in groups:
        runs = [f for f in figures if (f.broker, f.kind, f.system) == (broker, kind, system)]
        row: dict[str, Any] = {"broker": broker, "kind": kind, "system": system}
        for name in SUMMARY_FIGURES:
            values = [v for f in runs if (v := getattr(f, name)) is not None]
            row[name] = spread(values)
        for name in ("p50", "p95", "p99"):
            row[f"wait_{name}_ms"] = spread([f.wait_ms[name] for f in runs if name in f.wait_ms])
        rows.append(row)
    for row in rows:
        base = _row_of(rows, row["broker"], row["kind"], "celery")
        for name in ("drain", "enqueue_single", "enqueue_bulk"):
            ours = row[name]
            # Celery has no bulk call: its one-by-one loop is the baseline of both.
            theirs = base["drain" if name == "drain" else "enqueue_single"] if base else None
            row[f"{name}_vs_celery"] = (
                ours["median"] / theirs["median"] if ours and theirs and theirs["median"] else None
            )
    return rows


def _row_of(
    rows: list[dict[str, Any]], broker: str, kind: str, system: str
) -> dict[str, Any] | None:
    return next(
        (r for r in rows if (r["broker"], r["kind"], r["system"]) == (broker, kind, system)), None
    )


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def render(report: dict[str, Any]) -> str:
    """The summary as a Markdown table: medians, min-max beside each, ratios to Celery."""
    head = (
        "| broker | job | system | enqueue/s (one by one) | enqueue/s (bulk) | drain jobs/s "
        "| × Celery | wait p50 / p95 / p99 ms | peak RSS MiB | CPU µs/job |\n"  # noqa: RUF001
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in report["summary"]:
        ratio = row["drain_vs_celery"]
        cpu = _cell(row["cpu_us_per_job"], "{:,.0f}")
        if row["ledger_cpu_us_per_job"]:
            cpu += f" (+{row['ledger_cpu_us_per_job']['median']:,.0f} ledger)"
        waits = " / ".join(
            _cell(row[f"wait_{q}_ms"], "{:.1f}", spread_shown=False) for q in ("p50", "p95", "p99")
        )
        lines.append(
            f"| {row['broker']} | {row['kind']} | {LABELS[row['system']]} "
            f"| {_cell(row['enqueue_single'], '{:,.0f}')} "
            f"| {_cell(row['enqueue_bulk'], '{:,.0f}')} "
            f"| {_cell(row['drain'], '{:,.0f}')} | {f'{ratio:.2f}' if ratio else '—'} "
            f"| {waits} | {_cell(row['peak_rss_mib'], '{:.0f}', spread_shown=False)} | {cpu} |"
        )
    return head + "\n".join(lines) + "\n"


def _cell(value: dict[str, float] | None, fmt: str, *, spread_shown: bool = True) -> str:
    if not value:
        return "—"
    median = fmt.format(value["median"])
    if not spread_shown or value["min"] == value["max"]:
        return median
    return f"{median} ({fmt.format(value['min'])}–{fmt.format(value['max'])})"  # noqa: RUF001


def chart(report: dict[str, Any], path: Path) -> None:
    """Bars of drain and enqueue rates, and of p95 wait, per broker and system (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["summary"]
    groups = sorted({(r["broker"], r["kind"]) for r in rows})
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in rows)]
    panels = (
        ("drain", "drain, jobs/s"),
        ("enqueue_single", "enqueue one by one, jobs/s"),
        ("wait_p95_ms", "enqueue-to-start p95, ms"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6))
    width = 0.8 / max(len(systems), 1)
    for axis, (name, title) in zip(axes, panels, strict=True):
        for index, system in enumerate(systems):
            medians, low, high = [], [], []
            for group in groups:
                row = _row_of(rows, *group, system)
                value = row[name] if row else None
                medians.append(value["median"] if value else 0)
                low.append(value["median"] - value["min"] if value else 0)
                high.append(value["max"] - value["median"] if value else 0)
            positions = [g + index * width for g in range(len(groups))]
            axis.bar(positions, medians, width, yerr=[low, high], capsize=3, label=LABELS[system])
        axis.set_xticks([g + width * (len(systems) - 1) / 2 for g in range(len(groups))])
        axis.set_xticklabels([f"{b}\n{k}" for b, k in groups])
        axis.set_title(title)
        if name.startswith("wait_"):
            axis.set_yscale("log")  # a system past its capacity waits 100 times longer
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(systems), fontsize=9)
    figure.suptitle(
        f"conveyor bench, {report['machine']['cpus']} CPUs, "
        f"{report['options']['concurrency']} worker processes, medians (min-max bars)"
    )
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(report: dict[str, Any], workdir: Path) -> tuple[Path, Path]:
    """``bench.json`` and ``bench.png`` in ``workdir``."""
    data = workdir / "bench.json"
    data.write_text(json.dumps(report, indent=2) + "\n")
    picture = workdir / "bench.png"
    chart(report, picture)
    return data, picture
