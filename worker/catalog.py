"""The job catalog: producers enqueue jobs whose code they do not import.

A worker declares every job type it runs in the ledger when it starts (name, queue, the
payload's JSON Schema, retry policy, the Conveyor version that declared it). A producer —
the Python client, ``conveyor enqueue``, the HTTP API — finds a job in its own registry
first and, when the job's module is not imported in its process, in the catalog, whose
schema it validates the payload against (jsonschema). So a service that only enqueues
installs Conveyor alone. A job that no worker has declared is :class:`UnknownTask`.

A lookup is cached for :data:`CACHE_S` per process; a job's new schema reaches producers
within that time after its first worker restarts with it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.config.settings import package_version
from conveyor.worker.errors import PayloadInvalid, UnknownTask
from conveyor.worker.jobs import REGISTRY, JobSpec
from conveyor.worker.ledger import Ledger
from conveyor.worker.models import DeclaredJob, utcnow

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

CACHE_S = 10.0
"""How long a process trusts what it read from the catalog."""


@dataclass(frozen=True, slots=True)
class CatalogJob:
    """A job type known from the catalog: enough to enqueue it and check its payload."""

    name: str
    queue: str | None
    max_attempts: int
    payload_schema: dict[str, Any] | None
    version: str
    validator: Validator | None = field(default=None, compare=False, repr=False)
    """Built once per lookup (:func:`_job_of`), not once per enqueue."""

    def check_schema(self, payload: dict[str, Any]) -> None:
        """Raise :class:`PayloadInvalid` when ``payload`` breaks the declared schema."""
        if self.validator is None:
            return
        from jsonschema.exceptions import best_match

        error = best_match(self.validator.iter_errors(payload))
        if error is not None:
            where = ".".join(str(part) for part in error.absolute_path)
            raise PayloadInvalid.at(self.name, where, error.message)


JobType = JobSpec | CatalogJob
"""What a producer enqueues against: the job's own code, or its catalog entry."""


def declaration(spec: JobSpec, *, worker: str, version: str) -> dict[str, Any]:
    """The catalog row of ``spec``."""
    backoff = spec.policy.backoff
    return {
        "name": spec.name,
        "queue": spec.queue,
        "payload_schema": spec.schema.model_json_schema() if spec.schema is not None else None,
        "max_attempts": spec.policy.max_attempts,
        "backoff": {
            "base_s": backoff.base_s,
            "multiplier": backoff.multiplier,
            "max_s": backoff.max_s,
        },
        "timeout_s": spec.timeout_s,
        "version": version,
        "declared_by": worker,
        "declared_at": utcnow(),
    }


def declare(ledger: Ledger, specs: Iterable[JobSpec], *, worker: str | None = None) -> int:
    """Write ``specs`` to the catalog (a worker at start); returns how many."""
    host = worker or socket.gethostname()
    rows = [declaration(spec, worker=host, version=package_version()) for spec in specs]
    ledger.declare(rows)
    return len(rows)


class Catalog:
    """A process's cached view of the catalog."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, CatalogJob | None]] = {}

    def lookup(self, ledger: Ledger, name: str) -> CatalogJob | None:
        key = (ledger.url, name)
        with self._lock:
            cached = self._seen.get(key)
        if cached is not None and time.monotonic() - cached[0] < CACHE_S:
            return cached[1]
        row = ledger.declared(name)
        found = _job_of(row) if row is not None else None
        with self._lock:
            self._seen[key] = (time.monotonic(), found)
        return found


CATALOG = Catalog()


def job_type(ledger: Ledger, name: str) -> JobType:
    """The job called ``name``: from this process's registry, else from the catalog."""
    spec = REGISTRY.get(name)
    if spec is not None:
        return spec
    found = CATALOG.lookup(ledger, name)
    if found is not None:
        return found
    known = sorted({*REGISTRY, *(row.name for row in ledger.catalog())})
    raise UnknownTask(
        f"unknown task {name!r}: no worker has declared it (known: {', '.join(known) or 'none'})"
    )


def catalog_view(rows: Sequence[DeclaredJob]) -> list[dict[str, Any]]:
    """The catalog as JSON (``conveyor jobs catalog --json``, ``GET /v1/catalog``)."""
    return [
        {
            "name": row.name,
            "queue": row.queue,
            "payload_schema": row.payload_schema,
            "max_attempts": row.max_attempts,
            "backoff": row.backoff,
            "timeout_s": row.timeout_s,
            "version": row.version,
            "declared_by": row.declared_by,
            "declared_at": row.declared_at.isoformat(),
        }
        for row in rows
    ]


def _job_of(row: DeclaredJob) -> CatalogJob:
    validator = None
    if row.payload_schema is not None:
        from jsonschema import Draft202012Validator  # only producers without the job's code

        validator = Draft202012Validator(row.payload_schema)
    return CatalogJob(
        row.name, row.queue, row.max_attempts, row.payload_schema, row.version, validator
    )
