"""The ledger's database: one pooled engine per process, and the sessions the rest use.

Celery's prefork pool forks worker processes after start-up, so the engine is created
lazily and re-created when the process id changes: a child never reuses its parent's
connections.

The few statements on every job's path (:mod:`worker.ledger.jobs`) skip SQLAlchemy's
execution machinery on PostgreSQL: :meth:`Database.direct` runs them on a psycopg
connection of the thread's own, in autocommit mode. Through SQLAlchemy Core, a claim and
a success cost about 3.5 times the CPU (docs/benchmarks.md, "The ledger's statements").
Their errors are raised as SQLAlchemy's, so callers handle one kind.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from time import monotonic
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from conveyor.worker.models import Job

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job about to be written by a producer."""

    id: str
    task: str
    queue: str
    payload: dict[str, Any]
    max_attempts: int
    idempotency_key: str | None = None
    priority: int | None = None
    run_at: datetime | None = None
    traceparent: str | None = None
    """W3C trace context of the enqueue (:mod:`worker.observability.tracing`); None when off."""
    tracestate: str | None = None
    expires_at: datetime | None = None
    """The deadline: not started by then, the job is cancelled unrun (reason ``expired``)."""


def _configure_sqlite(engine: Engine) -> None:
    """WAL, a busy timeout and ``BEGIN IMMEDIATE``, so concurrent writers queue, not fail."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """A pooled engine for ``url``; SQLite files get their parent folder created."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    # No pre-ping: it would add a round trip (and a transaction) to every checkout. A dead
    # connection fails its statement instead, the pool discards it, and the message is
    # retried (see worker.runtime.Postpone); pool_recycle retires idle connections.
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
    event.listen(engine, "handle_error", _read_only_is_a_disconnect)
    return engine


def _read_only_is_a_disconnect(context: ExceptionContext) -> None:
    """A write refused as read-only means the server is no longer the primary (a
    switchover demoted it): treat it as a lost connection, so SQLAlchemy discards the whole
    pool and the next connection finds the new primary through the multi-host URL's
    ``target_session_attrs=read-write``. Otherwise the pool would keep every connection to
    the old primary until ``pool_recycle``."""
    if isinstance(context.original_exception, psycopg.errors.ReadOnlySqlTransaction):
        context.is_disconnect = True


DIRECT_RECYCLE_S = 1800.0
"""Seconds a direct connection serves before it is replaced (the pool's ``pool_recycle``)."""

_INHERITED: list[Any] = []
"""Direct connections a forked child found in its parent's thread state: kept referenced,
never closed, since closing one would end the parent's session on the shared socket."""


class _Direct(threading.local):
    connection: psycopg.Connection[Any] | None = None
    pid: int = 0
    opened: float = 0.0


class Database:
    """Engine, sessions and row helpers shared by every part of :class:`~worker.ledger.Ledger`."""

    def __init__(self, url: str, *, pool_size: int = 5, replica_url: str | None = None) -> None:
        self.url = url
        self._pool_size = pool_size
        self._replica = Database(replica_url, pool_size=pool_size) if replica_url else None
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._direct = _Direct()

    @property
    def is_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def direct(self, sql: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run one autocommitted statement on this thread's own psycopg connection (one
        round trip) and return its first row. PostgreSQL only.

        Errors come as SQLAlchemy's (:class:`~sqlalchemy.exc.DataError` for data the
        database refuses, :class:`~sqlalchemy.exc.OperationalError` when it cannot be
        reached); a connection that broke, or whose server refused a write as read-only
        (demoted in a switchover), is dropped and the next call opens another.
        """
        return self._on_direct(
            lambda connection: connection.execute(sql, params).fetchone(), sql, params
        )

    def direct_transaction(
        self, steps: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[tuple[Any, ...] | None]:
        """Run ``steps`` (statements and their parameters) in one transaction on this
        thread's psycopg connection, sent together (pipeline mode: one round trip), and
        return the first row of each (None for none). Errors as :meth:`direct`'s."""

        def run(connection: psycopg.Connection[Any]) -> list[tuple[Any, ...] | None]:
            with connection.pipeline(), connection.transaction():
                cursors = [connection.execute(sql, params) for sql, params in steps]
            return [cursor.fetchone() if cursor.description else None for cursor in cursors]

        return self._on_direct(run, "; ".join(sql for sql, _ in steps), {})

    def _on_direct(
        self,
        work: Callable[[psycopg.Connection[Any]], _T],
        sql: str,
        params: Mapping[str, Any],
    ) -> _T:
        """``work`` on this thread's own psycopg connection, opened (again) as needed;
        ``sql`` and ``params`` name what it runs in an error."""
        held = self._direct
        connection = held.connection
        try:
            if (
                connection is None
                or held.pid != os.getpid()
                or monotonic() - held.opened > DIRECT_RECYCLE_S
            ):
                connection = self._open_direct()
            return work(connection)
        except psycopg.Error as exc:
            demoted = isinstance(exc, psycopg.errors.ReadOnlySqlTransaction)  # a switchover
            if connection is not None and (connection.broken or connection.closed or demoted):
                if demoted:
                    connection.close()
                held.connection = None
            raise DBAPIError.instance(
                sql, dict(params), exc, psycopg.Error, dialect=self.engine.dialect
            ) from exc

    def _open_direct(self) -> psycopg.Connection[Any]:
        held = self._direct
        if held.connection is not None:
            if held.pid == os.getpid():
                held.connection.close()
            else:
                _INHERITED.append(held.connection)
        held.connection = None
        held.connection = psycopg.connect(**self.psycopg_arguments(), autocommit=True)
        held.pid, held.opened = os.getpid(), monotonic()
        return held.connection

    def psycopg_arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``psycopg.connect`` for a connection of this database's own,
        outside the pool. The dialect's: a multi-host URL (``?host=h1:p1&host=h2:p2``)
        reaches libpq as the host and port lists the pool's connections get."""
        return dict(self.engine.dialect.create_connect_args(self.engine.url)[1])

    @property
    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is None or self._pid != os.getpid():
                    self._engine = make_engine(self.url, pool_size=self._pool_size)
                    self._sessions = sessionmaker(self._engine, expire_on_commit=False)
                    self._pid = os.getpid()
        return self._engine

    def session(self) -> Session:
        """A new session; the caller commits or rolls back."""
        _ = self.engine
        assert self._sessions is not None
        return self._sessions()

    def lagging_session(self) -> Session:
        """A new session for reads that tolerate lag (lists, counts, gauges): on the read
        replica (``CONVEYOR_DATABASE_REPLICA_URL``) when there is one, else the primary.

        A replica may be behind the primary: never read there what a write then decides on
        (claims, replays, the relay's queries), nor a job its producer just enqueued.
        """
        return (self._replica or self).session()

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection whose every statement commits on its own (PostgreSQL: no BEGIN)."""
        engine = self.engine
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                yield connection
        else:
            with engine.begin() as connection:
                yield connection

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self.session() as session, session.begin():
            yield session

    def dispose(self) -> None:
        held = self._direct
        if held.connection is not None and held.pid == os.getpid():
            held.connection.close()
        held.connection = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._replica is not None:
            self._replica.dispose()

    @staticmethod
    def _row(job: NewJob, now: datetime, **fields: Any) -> dict[str, Any]:
        """Column values for a new row from ``job``; ``fields`` set its state and the rest."""
        return {
            "id": job.id,
            "task": job.task,
            "queue": job.queue,
            "max_attempts": job.max_attempts,
            "idempotency_key": job.idempotency_key,
            "payload": job.payload,
            "priority": job.priority,
            "traceparent": job.traceparent,
            "tracestate": job.tracestate,
            "expires_at": job.expires_at,
            "created_at": now,
            "updated_at": now,
            **fields,
        }

    def _insert_into(self, table: Any) -> Any:
        """An INSERT for ``table`` in this database's dialect (with ``ON CONFLICT``)."""
        if self.engine.dialect.name == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def _insert(self) -> Any:
        return self._insert_into(Job)
