"""New job rows on PostgreSQL in one round trip: SQL built once per set of columns.

:meth:`~worker.ledger.jobs.JobPath.create` writes one row with :func:`single_insert` (through
:meth:`Database.direct`), :meth:`~worker.ledger.jobs.JobPath.create_many` a batch with
:func:`insert_rows`. The SQL comes from the table's own metadata, never from a caller.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, cast

from psycopg.types.json import Jsonb
from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

from conveyor.worker.models import Job

_jobs = cast(Table, Job.__table__)


# A batch of new rows on PostgreSQL: one INSERT whose text does not depend on the number
# of rows, each column passed as one array and unnested. A multi-row VALUES statement
# (SQLAlchemy's executemany) cost 143-224 µs per row here, much of it psycopg parsing the
# long statement; this one 36-53 µs (docs/benchmarks.md).
@cache
def _bulk_insert(columns: tuple[str, ...]) -> str:
    # Built from the table's own metadata, nothing from a caller: no injection possible.
    casts = [f"%s::{_column_type(name)}[]" for name in columns]
    return (
        f"INSERT INTO {_jobs.name} ({', '.join(columns)}) "  # noqa: S608
        f"SELECT * FROM unnest({', '.join(casts)}) "
        "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
    )


def _column_type(name: str) -> str:
    """The column's PostgreSQL type without its length: an explicit cast to VARCHAR(64)
    would cut a longer value short, where the INSERT's own assignment refuses it."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return re.sub(r"\(\d+\)", "", _jobs.c[name].type.compile(dialect=dialect))


@cache
def single_insert(columns: tuple[str, ...], keyed: bool) -> str:
    """One new row for :meth:`Database.direct`; with ``keyed``, nothing if its key is held."""
    values = [f"%({name})s::{_column_type(name)}" for name in columns]
    conflict = " ON CONFLICT (idempotency_key) DO NOTHING" if keyed else ""
    return (
        f"INSERT INTO {_jobs.name} ({', '.join(columns)}) "  # noqa: S608
        f"VALUES ({', '.join(values)}){conflict} RETURNING id"
    )


def insert_rows(connection: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert new rows in one statement, skipping those whose idempotency key is held;
    returns the ids of the rows inserted."""
    if connection.dialect.name == "postgresql":
        names = tuple(rows[0])  # every row has the same columns (Database._row)
        columns = [
            [Jsonb(row[name]) if name == "payload" else row[name] for row in rows] for name in names
        ]
        return set(connection.exec_driver_sql(_bulk_insert(names), tuple(columns)).scalars())
    statement = (
        sqlite.insert(_jobs)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(_jobs.c.id)
    )
    return set(connection.execute(statement, rows).scalars())
