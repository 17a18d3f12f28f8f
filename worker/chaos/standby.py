"""The ledger on a PostgreSQL primary with a synchronous streaming standby, promoted mid-run.

Both clusters are the run's own (:class:`~worker.chaos.services.PostgresInstance`), on free
loopback ports in the run's folder, and are stopped with the run. The standby is a
``pg_basebackup -R`` of the primary, streaming from a replication slot. The primary names
it in ``synchronous_standby_names`` with ``synchronous_commit=on``: a commit returns only
once the standby has flushed its WAL, so promoting the standby after the primary died
loses no committed transaction. Visibility on the standby is not part of that promise:
``on`` waits for the flush, not the replay (``remote_apply`` would, at the cost of a
replay on every commit's path).

Conveyor reaches the pair through one libpq multi-host URL with
``target_session_attrs=read-write`` (:attr:`StandbyPair.url`): a new connection tries
the primary, then the standby, and keeps the first that takes writes, so after the
promotion new connections land on the promoted standby with no change of settings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from conveyor.worker.chaos.services import PostgresInstance, as_postgres, pg_bin, wait_until

if TYPE_CHECKING:  # the scenarios import this module for their topology
    from conveyor.worker.chaos.scenarios import Faults, Request, Services

STANDBY_NAME = "standby"
"""The standby's ``application_name``, which the primary's ``synchronous_standby_names`` names."""
SLOT = "standby"
TERMINAL = ("succeeded", "dead", "cancelled")
"""The ledger's terminal job states (:data:`worker.models.TERMINAL_STATES`)."""
MIDRUN_SHARE = 0.25
"""The share of the run's jobs done before the failover (at least 10): the workers are
past start-up, writing to the ledger, and most jobs are still to come."""


class StandbyPair:
    """A primary and its synchronous standby; ``url`` reaches whichever takes writes.

    :meth:`start` creates ``database`` on the primary (the standby replays it). After
    :meth:`promote` the standby is the only primary; the old one stays down.
    """

    def __init__(self, directory: Path, *, database: str = "conveyor") -> None:
        self.directory = directory
        self.database = database
        self.primary = PostgresInstance(
            directory / "primary",
            settings={
                "wal_level": "replica",
                "max_wal_senders": "4",
                "max_replication_slots": "4",
                "synchronous_standby_names": STANDBY_NAME,
                "synchronous_commit": "on",
            },
        )
        self.standby = PostgresInstance(directory / "standby")
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        self.url = f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"
        self.replica_url = f"postgresql://postgres@127.0.0.1:{self.standby.port}/{database}"
        self.promoted = False

    def start(self) -> None:
        """Start the primary, clone the standby from it, wait until it streams as ``sync``."""
        self.primary.init()
        with (self.primary.data / "pg_hba.conf").open("a") as hba:  # initdb's default, spelled out
            hba.write("host replication all 127.0.0.1/32 trust\n")
        self.primary.start()
        self._clone()
        self.standby.start()
        wait_until(self._streams_in_sync, timeout_s=30, what="synchronous replication")
        with psycopg.connect(self.primary.url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.database}"')
            connection.execute("CREATE TABLE failover_probe (at timestamptz DEFAULT now())")
        wait_until(
            lambda: _connects(self.replica_url), timeout_s=30, what="the database on the standby"
        )

    def _clone(self) -> None:
        """``pg_basebackup -R``: the primary's data folder, a replication slot of its own and
        ``standby.signal``; ``primary_conninfo`` is written again to carry the standby's
        ``application_name`` (later lines of postgresql.auto.conf win)."""
        folder = self.standby.directory
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        subprocess.run(
            as_postgres(
                [
                    pg_bin("pg_basebackup"),
                    *("-D", str(self.standby.data), "-h", "127.0.0.1"),
                    *("-p", str(self.primary.port), "-U", "postgres"),
                    *("-X", "stream", "-C", "-S", SLOT, "-R", "-c", "fast", "--no-sync"),
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        conninfo = (
            f"host=127.0.0.1 port={self.primary.port} user=postgres application_name={STANDBY_NAME}"
        )
        with (self.standby.data / "postgresql.auto.conf").open("a") as auto:
            auto.write(f"primary_conninfo = '{conninfo}'\nprimary_slot_name = '{SLOT}'\n")

    def _streams_in_sync(self) -> bool:
        with psycopg.connect(self.primary.url) as connection:
            row = connection.execute(
                "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
                [STANDBY_NAME],
            ).fetchone()
        return row == ("streaming", "sync")

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster and backends (it stays down)."""
        self.primary.kill()

    def promote(self) -> None:
        """Promote the standby and make sure it waits for no synchronous standby of its own.

        It has none: ``synchronous_standby_names`` is on the old primary's command line,
        which a base backup does not copy. Were it in the copied configuration files, every
        commit on the new primary would hang waiting for a standby that does not exist, so
        it is checked and, if set, cleared with ALTER SYSTEM and a reload.
        """
        subprocess.run(
            as_postgres([pg_bin("pg_ctl"), "-D", str(self.standby.data), "-w", "promote"]),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.promoted = True
        with psycopg.connect(self.standby.url, autocommit=True) as connection:
            if self._standby_names(connection):
                connection.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
                connection.execute("SELECT pg_reload_conf()")
                wait_until(
                    lambda: not self._standby_names(connection),
                    timeout_s=10,
                    what="synchronous_standby_names cleared",
                )

    @staticmethod
    def _standby_names(connection: psycopg.Connection[Any]) -> str:
        row = connection.execute("SHOW synchronous_standby_names").fetchone()
        return str(row[0]) if row else ""

    def takes_writes(self) -> bool:
        """Whether a new connection on :attr:`url` commits a write (on the primary's
        ``postgres`` database, where the probe table is).

        No statement timeout: a commit waiting for a synchronous standby, cancelled, is
        kept with a mere warning, and would pass for a write the primary took.
        """
        url = self.url.replace(f"/{self.database}?", "/postgres?", 1) + "&connect_timeout=2"
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("INSERT INTO failover_probe DEFAULT VALUES")
        return True

    def fail_over(self, *, timeout_s: float = 60) -> float:
        """Kill the primary, promote the standby; seconds from the kill until a new
        connection on :attr:`url` commits a write."""
        self.kill_primary()
        killed = time.monotonic()
        self.promote()
        wait_until(self.takes_writes, timeout_s=timeout_s, what="a write on the promoted standby")
        return time.monotonic() - killed

    def terminal_jobs(self) -> set[str]:
        """Ids of the ledger's jobs in a terminal state, read where :attr:`url` leads."""
        with psycopg.connect(self.url, connect_timeout=5) as connection:
            rows = connection.execute(
                "SELECT id FROM conveyor_jobs WHERE state = ANY(%s)", [list(TERMINAL)]
            ).fetchall()
        return {str(row[0]) for row in rows}

    def stop(self) -> None:
        """Stop both clusters (a killed one is not asked: its stale ``postmaster.pid`` may
        name a process id reused since); whatever does not stop is killed."""
        for instance in (self.primary, self.standby):
            if instance.processes():
                instance.stop()
            instance.kill()


def _connects(url: str) -> bool:
    with psycopg.connect(url, connect_timeout=2):
        return True


def standby_services(request: Request, cleanup: ExitStack) -> Services:
    """A topology (:class:`~worker.chaos.scenarios.Scenario`): the shared broker, and the
    ledger on a primary and synchronous standby of the run's own."""
    from conveyor.worker.chaos.scenarios import Services

    pair = StandbyPair(
        request.workdir / "ledger", database=f"conveyor_chaos_{uuid.uuid4().hex[:10]}"
    )
    cleanup.callback(pair.stop)
    pair.start()
    return Services(request.shared_broker_url, pair.url, database=pair)


def fail_over_ledger(faults: Faults) -> None:
    """Once, mid-run: SIGKILL the ledger's primary and promote its synchronous standby.

    Measured: seconds from the kill until a new connection on the multi-host URL commits
    a write on the promoted standby (``failover_s``), and until the workers finished a
    job there (``resumed_s``: the platform's recovery); the committed transactions the
    failover lost: jobs terminal on the primary just before the kill that are not
    terminal on the promoted standby (``committed_lost``, 0 with synchronous commit), of
    the ``jobs_done_at_kill``.

    The old primary is not brought back. Restarted as it is, it would be a second
    primary, first in the URL's host list, taking the workers' new connections from the
    promoted standby (split brain); rejoining needs pg_rewind and a restart as a standby
    of the new primary, which is not what this scenario tests.
    """
    pair = faults.database
    assert isinstance(pair, StandbyPair)
    wanted = max(10, round(faults.jobs * MIDRUN_SHARE))
    while faults.pause(0.5, 2.0):
        before = pair.terminal_jobs()
        if len(before) < min(wanted, faults.jobs):
            continue
        killed = time.monotonic()
        took_s = pair.fail_over()
        after = pair.terminal_jobs()
        faults.counts["ledger_primary_killed"] += 1
        faults.figures["failover_s"] = round(took_s, 2)
        faults.figures["jobs_done_at_kill"] = len(before)
        faults.figures["committed_lost"] = len(before - after)
        while len(after) < faults.jobs and not faults.stop.is_set():
            with suppress(psycopg.Error):
                if len(pair.terminal_jobs()) > len(after):
                    break
            faults.stop.wait(0.1)
        faults.figures["resumed_s"] = round(time.monotonic() - killed, 2)
        break
    faults.stop.wait()
