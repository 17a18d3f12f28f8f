"""The parts of a Celery message that the runtime needs, read once per delivery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conveyor.worker.constants import IDEMPOTENCY_HEADER


@dataclass(frozen=True, slots=True)
class Delivery:
    """The parts of a Celery message the runtime needs."""

    job_id: str
    queue: str
    payload: dict[str, Any]
    idempotency_key: str | None
    priority: int | None
    args: tuple[Any, ...] = ()
    worker: str | None = None
    """The Celery node name of the worker that received it (``w1@host``): the ledger's
    ``worker`` column, so `conveyor jobs show` says which worker ran an attempt."""


def delivery_from_request(
    request: Any, payload: dict[str, Any], default_queue: str, *, args: tuple[Any, ...] = ()
) -> Delivery:
    """Read a :class:`Delivery` from Celery's task request (protocol v2 message)."""
    info = request.delivery_info or {}
    headers = request.headers or {}
    key = headers.get(IDEMPOTENCY_HEADER) or getattr(request, IDEMPOTENCY_HEADER, None)
    return Delivery(
        job_id=request.id,
        queue=info.get("routing_key") or default_queue,
        payload=payload,
        idempotency_key=str(key) if key is not None else None,
        priority=info.get("priority"),
        args=tuple(args),
        worker=getattr(request, "hostname", None),
    )
