"""The job API for task authors: ``@job`` and :class:`JobContext`.

``@job`` only records a :class:`JobSpec` in the registry; the decorated function stays
a plain function you can call in a unit test. The Celery app (:mod:`worker.app`)
turns every registered spec into a Celery task when it is built, so importing a task
module never touches a broker.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from conveyor.worker.errors import ConfigError, PayloadInvalid, UnknownTask
from conveyor.worker.limits import (
    NO_LIMITS,
    ConcurrencyLimit,
    KeyFunction,
    Limits,
    RateLimit,
)
from conveyor.worker.policy import Backoff, RetryPolicy
from conveyor.worker.schedules import Schedule
from conveyor.worker.schedules import every as every_period

if TYPE_CHECKING:
    from conveyor.config import Settings

DEFAULT_TIMEOUT_S = 300.0
PROGRESS_EVERY_S = 0.5
"""At most one progress write per this many seconds per attempt (the last one always)."""

log = logging.getLogger("conveyor.jobs")

ProgressWriter = Callable[[int, int, str | None], bool]
"""Records ``(done, total, note)`` for the running attempt; False when fenced out."""


class JobContext:
    """What a running job knows about itself.

    ``session`` is a SQLAlchemy session on the ledger database, opened the first time the
    job uses it. Its transaction commits together with the job's success and rolls back
    when the attempt fails, so effects written through it happen exactly once. A job that
    never touches it costs no transaction of its own: its success is one statement.

    :meth:`progress` reports how far the job is, outside that transaction.
    """

    __slots__ = (
        "_open_session",
        "_progress_at",
        "_session",
        "_write_progress",
        "attempt",
        "idempotency_key",
        "job_id",
        "max_attempts",
        "queue",
        "task",
    )

    def __init__(
        self,
        *,
        job_id: str,
        attempt: int,
        max_attempts: int,
        idempotency_key: str | None,
        task: str,
        queue: str,
        session: Session | None = None,
        open_session: Callable[[], Session] | None = None,
        write_progress: ProgressWriter | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.idempotency_key = idempotency_key
        self.task = task
        self.queue = queue
        self._session = session
        self._open_session = open_session
        self._write_progress = write_progress
        self._progress_at: float | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            if self._open_session is None:
                raise RuntimeError(f"job {self.job_id}: this context has no ledger session")
            self._session = self._open_session()
        return self._session

    @property
    def opened_session(self) -> Session | None:
        """The session if the job used it, else None (the runtime records success alone)."""
        return self._session

    def progress(self, done: int, total: int, note: str | None = None) -> bool:
        """Report that ``done`` of ``total`` steps are done, with an optional ``note`` (cut
        to 200 characters); shown by ``conveyor jobs show``, the API and the console.

        Written at once in a statement of its own, not in ``ctx.session``'s transaction:
        it shows while the job runs and stays if the attempt fails. Throttled: at most one
        write per :data:`PROGRESS_EVERY_S` seconds, except that ``done == total`` is always
        written. Returns True if this call was written. Progress is advisory: a write that
        fails (the ledger unreachable) is logged and dropped, never the job's error. Raises
        :class:`ValueError` unless ``0 <= done <= total``.
        """
        if not 0 <= done <= total:
            raise ValueError(f"progress must be 0 <= done <= total, got {done} of {total}")
        if self._write_progress is None:
            return False
        now = monotonic()
        last = self._progress_at
        if done != total and last is not None and now - last < PROGRESS_EVERY_S:
            return False
        self._progress_at = now
        try:
            return self._write_progress(done, total, note)
        except SQLAlchemyError as exc:
            log.warning(
                "job.progress_unrecorded",
                extra={"job_id": self.job_id, "task": self.task, "error_type": type(exc).__name__},
            )
            return False

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    def __repr__(self) -> str:
        return f"JobContext(job_id={self.job_id!r}, task={self.task!r}, attempt={self.attempt})"


JobFunction = Callable[[JobContext, Any], Any]
F = TypeVar("F", bound=JobFunction)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything Conveyor knows about one job type."""

    name: str
    fn: JobFunction
    queue: str | None
    policy: RetryPolicy
    timeout_s: float
    schema: type[BaseModel] | None
    log_payload: bool
    schedule: Schedule | None = None
    """When the job runs by itself (:mod:`worker.schedules`), if it is periodic."""
    limits: Limits = NO_LIMITS
    """Its fleet-wide rate and concurrency limits (:mod:`worker.limits`), if any."""

    @property
    def max_attempts(self) -> int:
        return self.policy.max_attempts

    def check_schema(self, payload: dict[str, Any]) -> None:
        """Raise :class:`~worker.errors.PayloadInvalid` when ``payload`` breaks the schema."""
        if self.schema is None:
            return
        try:
            self.schema.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise PayloadInvalid.at(self.name, where, first["msg"]) from None


REGISTRY: dict[str, JobSpec] = {}
"""Every job type defined by the imported task modules, by name."""


def spec_for(name: str) -> JobSpec:
    """The registered job called ``name``; raises :class:`~worker.errors.UnknownTask`."""
    spec = REGISTRY.get(name)
    if spec is None:
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise UnknownTask(f"unknown task {name!r} (known: {known})")
    return spec


def job(
    *,
    name: str,
    queue: str | None = None,
    max_attempts: int = 5,
    backoff: Backoff | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    schema: type[BaseModel] | None = None,
    fatal: tuple[type[BaseException], ...] = (),
    retry_on: tuple[type[BaseException], ...] = (),
    log_payload: bool = False,
    every: str | float | None = None,
    schedule: Schedule | None = None,
    rate_limit: str | None = None,
    rate_key: KeyFunction | None = None,
    concurrency: int | None = None,
    concurrency_key: KeyFunction | None = None,
) -> Callable[[F], F]:
    """Declare a job type.

    The function receives ``(ctx, payload)``: ``payload`` is an instance of ``schema``
    when one is given (validated before the function runs; a mismatch dead-letters at
    once), else the message's kwargs as a dict. Its return value must be JSON-serializable
    (or a pydantic model) and is kept as the job's result. ``queue=None`` means the
    deployment's default queue.

    Periodic: ``every="5m"`` or ``schedule=cron("0 * * * *", tz="Europe/Berlin")`` makes
    the relay enqueue it once per tick (docs/jobs.md, "Periodic jobs").

    Limits, enforced across every worker before an attempt starts (docs/jobs.md,
    "Rate and concurrency limits"): ``rate_limit="100/m"`` spaces the starts evenly, per
    job or per ``rate_key(payload)``; ``concurrency=5`` lets at most five attempts run at
    once, per job or per ``concurrency_key(payload)``. A key function receives the
    message's payload as a dict. A job held back by a limit waits in the ledger
    (``scheduled``) and does not use up an attempt.
    """
    if not name or len(name) > 200:
        raise ValueError("a job name must have 1 to 200 characters")
    if timeout_s <= 0:
        raise ValueError("timeout_s must be > 0")
    if every is not None and schedule is not None:
        raise ValueError(f"job {name!r}: give every= or schedule=, not both")
    if every is not None:
        schedule = every_period(every)
    limits = _limits(name, rate_limit, rate_key, concurrency, concurrency_key)
    policy = RetryPolicy(
        max_attempts=max_attempts, backoff=backoff or Backoff(), fatal=fatal, retry_on=retry_on
    )

    def register(fn: F) -> F:
        existing = REGISTRY.get(name)
        if existing is not None and existing.fn is not fn:
            qualified = f"{existing.fn.__module__}.{existing.fn.__qualname__}"
            raise ValueError(f"job name {name!r} is already used by {qualified}")
        REGISTRY[name] = JobSpec(
            name=name,
            fn=fn,
            queue=queue,
            policy=policy,
            timeout_s=timeout_s,
            schema=schema,
            log_payload=log_payload,
            schedule=schedule,
            limits=limits,
        )
        return fn

    return register


def _limits(
    name: str,
    rate_limit: str | None,
    rate_key: KeyFunction | None,
    concurrency: int | None,
    concurrency_key: KeyFunction | None,
) -> Limits:
    """``@job``'s limit arguments as :class:`Limits`; raises ValueError on bad ones."""
    if rate_key is not None and rate_limit is None:
        raise ValueError(f"job {name!r}: rate_key= needs rate_limit=")
    if concurrency_key is not None and concurrency is None:
        raise ValueError(f"job {name!r}: concurrency_key= needs concurrency=")
    if concurrency is not None and (isinstance(concurrency, bool) or concurrency < 1):
        raise ValueError(f"job {name!r}: concurrency must be an integer >= 1")
    return Limits(
        rate=None if rate_limit is None else RateLimit.parse(rate_limit, rate_key),
        concurrency=(
            None if concurrency is None else ConcurrencyLimit(concurrency, concurrency_key)
        ),
    )


def import_task_modules(settings: Settings) -> list[str]:
    """Import the deployment's task modules (``CONVEYOR_TASK_MODULES``); returns their names."""
    names = list(dict.fromkeys(settings.task_modules))
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"CONVEYOR_TASK_MODULES: cannot import {name!r}: {exc}") from exc
    return names
