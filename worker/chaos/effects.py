"""The table in which chaos jobs record each effect (apart from the job, which importing
registers: the harness and the checks read the table without loading the job type)."""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table

metadata = MetaData()
effects = Table(
    "conveyor_chaos_effects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False, index=True),
    Column("job_id", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
)
