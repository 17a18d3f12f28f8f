"""How jobs look to people and programs: the JSON shapes of ``--json`` and the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from conveyor.worker.models import Job


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_view(job: Job) -> dict[str, Any]:
    """One job as a JSON object (the shape ``conveyor jobs show --json`` prints)."""
    error = None
    if job.error_type is not None:
        error = {
            "type": job.error_type,
            "message": job.error_message,
            "reason": job.dead_reason,
        }
    return {
        "id": job.id,
        "task": job.task,
        "queue": job.queue,
        "state": job.state,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "idempotency_key": job.idempotency_key,
        "priority": job.priority,
        "payload": job.payload,
        "result": job.result,
        "error": error,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "run_at": iso(job.run_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "expires_at": iso(job.expires_at),
        "cancel_reason": job.cancel_reason,
        "progress": progress_view(job),
    }


def progress_view(job: Job) -> dict[str, Any] | None:
    """The job's last reported progress (``ctx.progress``), or None if it reported none."""
    if job.progress_total is None:
        return None
    return {
        "done": job.progress_done,
        "total": job.progress_total,
        "note": job.progress_note,
        "at": iso(job.progress_at),
    }
