"""What a producer may enqueue: the one set of rules the client, the CLI and the API share.

Every producer path goes through :func:`worker.client.enqueue`, which calls these, so a
bad payload or a reused idempotency key is the same error with the same words whether it
came from Python, ``conveyor enqueue`` or ``POST /v1/jobs``:

- :func:`check_payload`: a JSON object that the ledger and the wire carry faithfully (no
  NUL characters or lone surrogates, finite numbers, integers within 64 bits), no deeper than
  ``CONVEYOR_MAX_PAYLOAD_DEPTH`` and no larger than ``CONVEYOR_MAX_PAYLOAD_BYTES`` as JSON
  (:class:`PayloadTooLarge`), then the job's schema;
- :func:`check_key_reuse`: an idempotency key already held by a job with another task
  or payload is :class:`IdempotencyConflict`, never that other job's id.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Final

from conveyor.worker.errors import PayloadInvalid, UsageError

if TYPE_CHECKING:
    from conveyor.worker.catalog import JobType

INT64_MAX: Final = 2**63 - 1
MAX_DEPTH: Final = 32
"""The default deepest nesting of a payload (``CONVEYOR_MAX_PAYLOAD_DEPTH``)."""


class PayloadTooLarge(PayloadInvalid):
    """The payload is larger than ``CONVEYOR_MAX_PAYLOAD_BYTES`` as JSON."""


class IdempotencyConflict(UsageError):
    """The idempotency key belongs to a job with another task or payload."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"idempotency key {key!r} belongs to a job with another task or payload")


def storable(value: Any, where: str = "payload", *, max_depth: int = MAX_DEPTH) -> None:
    """Raise ValueError for JSON the ledger and the wire cannot carry faithfully, or that
    nests objects and arrays deeper than ``max_depth``."""
    _storable(value, where, 0, max_depth)


def _storable(value: Any, where: str, depth: int, max_depth: int) -> None:
    if isinstance(value, dict | list | tuple) and depth >= max_depth:
        raise ValueError(f"{where}: objects and arrays nest at most {max_depth} deep")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: object keys must be strings")
            _scalar(key, where)
            _storable(item, f"{where}.{key}", depth + 1, max_depth)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _storable(item, f"{where}[{index}]", depth + 1, max_depth)
    else:
        _scalar(value, where)


def _scalar(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where}: strings must not contain NUL characters")
        if not value.isascii() and _has_surrogate(value):
            raise ValueError(f"{where}: strings must not contain lone surrogates (not UTF-8)")
    elif isinstance(value, int):
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise ValueError(f"{where}: integers must fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: numbers must be finite")
    else:
        raise ValueError(f"{where}: {type(value).__name__} is not JSON")


def _has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate, which UTF-8 (so PostgreSQL) cannot carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_payload(
    job: JobType,
    payload: Any,
    *,
    max_bytes: int | None = None,
    max_depth: int = MAX_DEPTH,
) -> None:
    """Raise :class:`PayloadInvalid` unless ``payload`` can be a job of ``job``: a JSON
    object the ledger can store, nested at most ``max_depth`` deep, at most ``max_bytes``
    as JSON (:class:`PayloadTooLarge`), matching the job's schema (its own, or the
    catalog's)."""
    if not isinstance(payload, dict):
        raise PayloadInvalid("the payload must be a JSON object")
    try:
        storable(payload, max_depth=max_depth)
    except ValueError as exc:
        raise PayloadInvalid(f"payload for {job.name!r} is invalid: {exc}") from None
    if max_bytes is not None:
        size = json_size(payload)
        if size > max_bytes:
            raise PayloadTooLarge(
                f"payload for {job.name!r} is {size} bytes as JSON; the limit is {max_bytes}"
            )
    job.check_schema(payload)


def json_size(payload: dict[str, Any]) -> int:
    """``payload``'s size as JSON the way the wire carries it (kombu's encoding: ASCII, with
    ``\\u`` escapes), the measure of the payload limit."""
    return len(json.dumps(payload))


def check_key_reuse(
    key: str, *, task: str, payload: dict[str, Any], holder_task: str, holder_payload: Any
) -> None:
    """Raise :class:`IdempotencyConflict` if the key's job is not this same request."""
    if holder_task != task or holder_payload != payload:
        raise IdempotencyConflict(key)
