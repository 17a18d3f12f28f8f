"""The ledger: the source of truth for every job's state, split by who calls it.

=====================  ===================================================================
module                 who calls it, for what
=====================  ===================================================================
``database``           everyone: the pooled engine, sessions, :class:`NewJob`
``jobs``               producers and workers: create, claim, succeed, fail, renew, cancel
``statements``         the job path's claim, success and progress statements, built once
``claims``             what a claim found: the attempt, or why not (shared by both claims)
``inserts``            new job rows on PostgreSQL in one round trip, one or a batch
``relay``              the relay: due retries, expired leases, stranded jobs
``dead``               :mod:`worker.deadletter`: the dead row of a poison message
``reads``              the CLI, the API and tests: get, list, attempts, counts
``keys``               :mod:`worker.api.keys`: the API's keys
``catalog``            workers declare their job types; producers read them
``pauses``             ``conveyor queues pause``/``resume`` and the API; every worker polls
``leases``             :mod:`worker.leader`: the relay's duty, held by one process at a time
``retention``          the relay: finished jobs pruned after their age, in short batches
``schedules``          the relay's scheduler and ``conveyor schedules``: periodic jobs' ticks
``limits``             workers: rate slots and concurrency-gated claims; the relay's release
=====================  ===================================================================

:class:`Ledger` joins the parts into the one object a process holds (``app.ledger``), safe to
share between the threads of a process. Replay and purge of dead jobs live with their
audit trail in :mod:`worker.operations.dlq`.
"""

from __future__ import annotations

from conveyor.worker.errors import WORKER_LOST, Failure
from conveyor.worker.ledger.catalog import CatalogStore
from conveyor.worker.ledger.claims import Claim
from conveyor.worker.ledger.database import Database, NewJob, make_engine
from conveyor.worker.ledger.dead import DeadLetterStore
from conveyor.worker.ledger.jobs import JobPath
from conveyor.worker.ledger.keys import KeyStore
from conveyor.worker.ledger.leases import LeaseStore
from conveyor.worker.ledger.limits import LimitStore
from conveyor.worker.ledger.pauses import PauseStore
from conveyor.worker.ledger.reads import Reads
from conveyor.worker.ledger.relay import Publish, RelayQueries
from conveyor.worker.ledger.schedules import ScheduleStore

__all__ = [
    "WORKER_LOST",
    "Claim",
    "Database",
    "Failure",
    "Ledger",
    "NewJob",
    "Publish",
    "make_engine",
]


class Ledger(
    JobPath,
    RelayQueries,
    DeadLetterStore,
    Reads,
    KeyStore,
    CatalogStore,
    PauseStore,
    LeaseStore,
    ScheduleStore,
    LimitStore,
):
    """The ledger of one database: every read and write of its job tables."""
