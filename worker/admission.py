"""What a producer may enqueue: the one set of rules the client, the CLI and the API share.

Every producer path goes through :func:`worker.client.enqueue`, which calls these, so a
bad payload or a reused idempotency key is the same error with the same words whether it
came from Python, ``conveyor enqueue`` or ``POST /v1/jobs``:

- :func:`check_payload`: a JSON object that the ledger and the wire carry faithfully (no
  NUL characters, finite numbers, integers within 64 bits), then the job's schema;
- :func:`check_key_reuse`: an idempotency key already held by a job with another task
  or payload is :class:`IdempotencyConflict`, never that other job's id.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final

from conveyor.worker.errors import PayloadInvalid, UsageError

if TYPE_CHECKING:
    from conveyor.worker.catalog import JobType

INT64_MAX: Final = 2**63 - 1


class IdempotencyConflict(UsageError):
    """The idempotency key belongs to a job with another task or payload."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"idempotency key {key!r} belongs to a job with another task or payload")


def storable(value: Any, where: str = "payload") -> None:
    """Raise ValueError for JSON the ledger and the wire cannot carry faithfully."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: object keys must be strings")
            _scalar(key, where)
            storable(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            storable(item, f"{where}[{index}]")
    else:
        _scalar(value, where)


def _scalar(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where}: strings must not contain NUL characters")
    elif isinstance(value, int):
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise ValueError(f"{where}: integers must fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: numbers must be finite")
    else:
        raise ValueError(f"{where}: {type(value).__name__} is not JSON")


def check_payload(job: JobType, payload: Any) -> None:
    """Raise :class:`PayloadInvalid` unless ``payload`` can be a job of ``job``: a JSON
    object the ledger can store, matching the job's schema (its own, or the catalog's)."""
    if not isinstance(payload, dict):
        raise PayloadInvalid("the payload must be a JSON object")
    try:
        storable(payload)
    except ValueError as exc:
        raise PayloadInvalid(f"payload for {job.name!r} is invalid: {exc}") from None
    job.check_schema(payload)


def check_key_reuse(
    key: str, *, task: str, payload: dict[str, Any], holder_task: str, holder_payload: Any
) -> None:
    """Raise :class:`IdempotencyConflict` if the key's job is not this same request."""
    if holder_task != task or holder_payload != payload:
        raise IdempotencyConflict(key)
