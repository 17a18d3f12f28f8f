"""``conveyor scale``: what each queue needs, and changing running workers to give it.

The read side joins two views: the ledger's (per queue: jobs waiting, the oldest wait, and
how many jobs finished lately, which gives the rate) and the fleet's, asked of the running
workers through Celery's remote control (``inspect stats`` and ``active_queues``: who
consumes which queue with how many processes). From the rate per process it recommends
how many processes would drain the backlog within a target time.

The write side (:func:`plan` then :func:`apply`) sends one remote-control command to one
worker: grow or shrink its pool, set its autoscale bounds, add or cancel a queue consumer.
:func:`plan` refuses what the worker or the broker cannot do, with the reason, before
anything is sent; ``--dry-run`` stops there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from conveyor.config.settings import Settings
from conveyor.worker.errors import UsageError
from conveyor.worker.ledger import Ledger
from conveyor.worker.models import Job, JobState, utcnow
from conveyor.worker.operations.stats import queue_stats

RATE_WINDOW_S = 300.0
"""How far back finished jobs count toward a queue's measured rate."""

INSPECT_TIMEOUT_S = 1.0
"""How long to wait for the workers' replies to remote control."""

PREFORK = "celery.concurrency.prefork:TaskPool"


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One running worker as it reports itself."""

    name: str
    pool: str
    """``prefork``, ``threads``, ``solo`` (the last part of Celery's pool class path)."""
    processes: int
    queues: list[str]
    autoscale: dict[str, int] | None
    """``{"max": M, "min": N}`` when started with ``--autoscale``."""


@dataclass(slots=True)
class QueueNeed:
    """One queue: its backlog, who drains it and how fast, and what would suffice."""

    name: str
    depth: int
    running: int
    oldest_queued_age_s: float | None
    paused: bool
    workers: list[str] = field(default_factory=list)
    processes: int = 0
    rate_per_s: float = 0.0
    """Jobs of this queue finished per second over the last :data:`RATE_WINDOW_S`."""
    drain_s: float | None = None
    """At the measured rate, how long the backlog takes to drain."""
    recommended_processes: int | None = None
    advice: str = ""


def fleet(
    app: Any, *, only: str | None = None, timeout_s: float = INSPECT_TIMEOUT_S
) -> list[WorkerView]:
    """Every worker that answers remote control within ``timeout_s``, by name; with
    ``only``, that one worker (the answer comes as soon as it replies)."""
    if only is None:
        inspect = app.control.inspect(timeout=timeout_s)
    else:
        inspect = app.control.inspect([only], timeout=timeout_s, limit=1)
    stats: dict[str, Any] = inspect.stats() or {}
    active: dict[str, Any] = inspect.active_queues() or {}
    workers = []
    for name in sorted(stats):
        pool = stats[name].get("pool") or {}
        implementation = str(pool.get("implementation", "?"))
        processes = pool.get("processes")
        workers.append(
            WorkerView(
                name=name,
                pool=_pool_name(implementation),
                processes=len(processes)
                if isinstance(processes, list)
                else int(pool.get("max-concurrency", 1)),
                queues=sorted(q["name"] for q in active.get(name) or []),
                autoscale=_autoscale(stats[name].get("autoscaler")),
            )
        )
    return workers


def _pool_name(implementation: str) -> str:
    module = implementation.partition(":")[0].rpartition(".")[2]
    return {"thread": "threads"}.get(module, module)


def _autoscale(info: Any) -> dict[str, int] | None:
    if not isinstance(info, dict) or "max" not in info:
        return None
    return {"max": int(info["max"]), "min": int(info["min"])}


def finished_rates(ledger: Ledger, *, window_s: float = RATE_WINDOW_S) -> dict[str, float]:
    """Jobs finished (succeeded or dead) per second, per queue, over the last ``window_s``."""
    since = utcnow() - timedelta(seconds=window_s)
    query = (
        select(Job.queue, func.count())
        .where(Job.state.in_([JobState.SUCCEEDED, JobState.DEAD]), Job.finished_at >= since)
        .group_by(Job.queue)
    )
    with ledger.lagging_session() as session:
        return {queue: count / window_s for queue, count in session.execute(query).all()}


def needs(
    ledger: Ledger, workers: list[WorkerView], *, target_s: float, window_s: float = RATE_WINDOW_S
) -> list[QueueNeed]:
    """Per queue (every queue with jobs, a pause or a consumer): backlog, consumers, rate and
    the recommendation to drain the backlog within ``target_s``."""
    stats = {queue["name"]: queue for queue in queue_stats(ledger)["queues"]}
    rates = finished_rates(ledger, window_s=window_s)
    consumed = {name for worker in workers for name in worker.queues}
    result = []
    for name in sorted(set(stats) | consumed | set(rates)):
        row = stats.get(name, {})
        need = QueueNeed(
            name=name,
            depth=int(row.get("depth", 0)),
            running=int(row.get("running", 0)),
            oldest_queued_age_s=row.get("oldest_queued_age_s"),
            paused=bool(row.get("paused", False)),
            rate_per_s=rates.get(name, 0.0),
        )
        for worker in workers:
            if name in worker.queues:
                need.workers.append(worker.name)
                need.processes += worker.processes
        recommend(need, target_s=target_s)
        result.append(need)
    return result


def recommend(need: QueueNeed, *, target_s: float) -> None:
    """Fill in ``drain_s``, ``recommended_processes`` and ``advice`` for ``need``.

    The rate per process is the queue's measured rate over the processes that consume it
    now; the recommendation is the processes that rate needs to finish the queued jobs
    (plus those running) within ``target_s``. Without a measured rate there is no figure,
    only advice.
    """
    backlog = need.depth + need.running
    if need.paused:
        need.advice = "paused: resume it (`conveyor queues resume`) before scaling"
        return
    if backlog == 0:
        need.drain_s = 0.0
        need.recommended_processes = need.processes
        need.advice = "nothing waiting"
        return
    if need.processes == 0:
        need.advice = "no worker consumes this queue: start one (`conveyor worker -Q ...`)"
        return
    if need.rate_per_s <= 0:
        need.advice = "no job of this queue finished lately: no rate to scale from"
        return
    need.drain_s = backlog / need.rate_per_s
    per_process = need.rate_per_s / need.processes
    need.recommended_processes = max(1, math.ceil(backlog / (per_process * target_s)))
    if need.recommended_processes > need.processes:
        need.advice = f"grow by {need.recommended_processes - need.processes}"
    elif need.recommended_processes < need.processes:
        need.advice = f"could shrink by {need.processes - need.recommended_processes}"
    else:
        need.advice = "enough"


def as_dict(item: QueueNeed | WorkerView) -> dict[str, Any]:
    return asdict(item)


@dataclass(frozen=True, slots=True)
class Change:
    """One remote-control command for one worker, checked by :func:`plan`."""

    worker: str
    command: str
    """``pool_grow``, ``pool_shrink``, ``autoscale``, ``add_consumer``, ``cancel_consumer``."""
    arguments: dict[str, Any]
    summary: str


def plan(
    settings: Settings,
    workers: list[WorkerView],
    *,
    worker: str,
    grow: int | None = None,
    shrink: int | None = None,
    autoscale: tuple[int, int] | None = None,
    add_queue: str | None = None,
    cancel_queue: str | None = None,
) -> Change:
    """The one change asked for, or :class:`~worker.errors.UsageError` saying why it
    cannot be made: no such worker, a pool that cannot resize, autoscale on quorum queues
    or on a worker started without it, a queue already (not) consumed."""
    asked = [x for x in (grow, shrink, autoscale, add_queue, cancel_queue) if x is not None]
    if len(asked) != 1:
        raise UsageError(
            "say exactly one of --grow, --shrink, --autoscale, --add-queue, --cancel-queue"
        )
    found = {w.name: w for w in workers}
    if worker not in found:
        names = ", ".join(found) or "none answered"
        raise UsageError(f"no worker named {worker!r} answered (workers: {names})")
    target = found[worker]
    if grow is not None:
        return _resize(target, grow)
    if shrink is not None:
        return _resize(target, -shrink)
    if autoscale is not None:
        return _autoscale_change(settings, target, autoscale)
    if add_queue is not None:
        if add_queue in target.queues:
            raise UsageError(f"{worker} consumes {add_queue!r} already")
        return Change(
            worker, "add_consumer", {"queue": add_queue}, f"{worker} starts consuming {add_queue}"
        )
    assert cancel_queue is not None
    return _cancel(target, cancel_queue)


def _resize(target: WorkerView, by: int) -> Change:
    worker = target.name
    if target.pool != "prefork":
        raise UsageError(
            f"{worker} runs the {target.pool} pool, which cannot grow or shrink: "
            "start more workers instead (or run it with --pool prefork)"
        )
    if target.autoscale is not None:
        raise UsageError(f"{worker} autoscales: change its bounds with --autoscale MAX,MIN")
    if target.processes + by < 1:
        raise UsageError(
            f"{worker} has {target.processes} processes: it can shrink by at most "
            f"{target.processes - 1}"
        )
    verb, command = ("grow", "pool_grow") if by > 0 else ("shrink", "pool_shrink")
    return Change(
        worker,
        command,
        {"n": abs(by)},
        f"{verb} {worker} from {target.processes} to {target.processes + by} processes",
    )


def _autoscale_change(settings: Settings, target: WorkerView, bounds: tuple[int, int]) -> Change:
    worker = target.name
    high, low = bounds
    quorum = settings.quorum_queues(target.queues)
    if quorum:
        raise UsageError(
            f"{worker} consumes quorum queues ({', '.join(quorum)}), and workers on quorum "
            "queues cannot autoscale (Celery does not support it)"
        )
    if target.autoscale is None:
        raise UsageError(
            f"{worker} was not started with --autoscale: restart it with "
            "`conveyor worker --autoscale MAX,MIN` or use --grow/--shrink"
        )
    if not 1 <= low <= high:
        raise UsageError("--autoscale MAX,MIN needs 1 <= MIN <= MAX")
    return Change(
        worker,
        "autoscale",
        {"max": high, "min": low},
        f"autoscale {worker} between {low} and {high} processes",
    )


def _cancel(target: WorkerView, queue: str) -> Change:
    worker = target.name
    if queue not in target.queues:
        raise UsageError(f"{worker} does not consume {queue!r}")
    if target.queues == [queue]:
        raise UsageError(
            f"{queue!r} is the only queue {worker} consumes: stop the worker instead "
            "(or `conveyor queues pause` to hold the queue everywhere)"
        )
    return Change(worker, "cancel_consumer", {"queue": queue}, f"{worker} stops consuming {queue}")


def apply(app: Any, change: Change, *, timeout_s: float = INSPECT_TIMEOUT_S) -> str:
    """Send ``change`` to its worker and return the worker's answer; UsageError if it
    refused or did not answer."""
    replies = app.control.broadcast(
        change.command,
        arguments=change.arguments,
        destination=[change.worker],
        reply=True,
        timeout=timeout_s,
    )
    for reply in replies or []:
        answer = reply.get(change.worker)
        if isinstance(answer, dict):
            if "ok" in answer:
                return str(answer["ok"])
            raise UsageError(f"{change.worker} refused: {answer.get('error', answer)}")
    raise UsageError(f"{change.worker} did not answer within {timeout_s:g} s")
