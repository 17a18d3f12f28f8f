"""Webhook delivery: POST a JSON body to a URL, retrying the way receivers expect.

- 2xx: delivered; the job's result records the status code.
- 429 and 5xx: retryable; a ``Retry-After`` header (seconds or an HTTP date) sets the wait.
- Timeouts and connection errors: retryable, on the job's backoff.
- Any other status (3xx, 4xx): fatal, dead-lettered at once: retrying will not help.

Every attempt sends the same ``Idempotency-Key`` header (the job's idempotency key, or its
id), so a receiver can drop a delivery it already processed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import BaseModel, Field, HttpUrl

from conveyor import Backoff, Fatal, JobContext, RetryAfter, job
from conveyor.worker.errors import Retryable

USER_AGENT = "conveyor-webhooks/1"


class Webhook(BaseModel):
    """Payload of ``webhooks.deliver``."""

    url: HttpUrl
    body: Any = Field(description="JSON body to POST")
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(10.0, gt=0, le=60)


class ReceiverUnavailable(Retryable):
    """The receiver answered 429 or 5xx without saying when to come back."""


def retry_after_s(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


@job(
    name="webhooks.deliver",
    queue="webhooks",
    max_attempts=8,
    backoff=Backoff(base_s=5, multiplier=2, max_s=600),
    timeout_s=90,
    schema=Webhook,
)
def deliver(ctx: JobContext, hook: Webhook) -> dict[str, Any]:
    """Deliver one webhook; see the module docstring for how each outcome is handled."""
    headers = httpx.Headers({"User-Agent": USER_AGENT, **hook.headers})
    # Replaces a payload header of any case: every attempt sends the job's own key.
    headers["Idempotency-Key"] = ctx.idempotency_key or ctx.job_id
    try:
        response = httpx.post(
            str(hook.url), json=hook.body, headers=headers, timeout=hook.timeout_s
        )
    except httpx.TimeoutException as exc:
        raise ReceiverUnavailable(f"timed out after {hook.timeout_s:g}s: {exc}") from exc
    except httpx.TransportError as exc:
        raise ReceiverUnavailable(f"could not reach the receiver: {exc}") from exc
    status = response.status_code
    if 200 <= status < 300:
        return {"status": status}
    if status == 429 or status >= 500:
        wait_s = retry_after_s(response.headers.get("Retry-After"))
        if wait_s is not None:
            raise RetryAfter(wait_s, f"receiver answered {status}, Retry-After {wait_s:g}s")
        raise ReceiverUnavailable(f"receiver answered {status}")
    raise Fatal(f"receiver answered {status}; not retrying")
