"""A PostgreSQL primary with a synchronous streaming standby (worker/chaos/standby.py).

The pair is this module's own, on free ports; the shared PostgreSQL is not touched. A
row committed on the primary is on the standby; the standby refuses writes; the ledger,
given the multi-host URL and the standby as its replica, writes on the primary and lists
from the standby; the multi-host URL reaches the primary, and after the primary is
SIGKILLed and the standby promoted, a new connection on the same URL reaches the
promoted standby, which has every committed row and takes writes. The `ledger-failover`
chaos scenario does the same under load. The failover test breaks the pair, so it comes last.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from conveyor.config import load_settings
from conveyor.worker.chaos.standby import StandbyPair
from conveyor.worker.ledger import Ledger, NewJob
from conveyor.worker.migrate import upgrade

pytestmark = pytest.mark.integration


def started_pair() -> Iterator[StandbyPair]:
    # Not under tmp_path: pytest's base folder is root's alone (0700), and the clusters run
    # as the postgres user, who must reach their data folders.
    folder = Path(tempfile.mkdtemp(prefix="conveyor-standby-"))
    folder.chmod(0o755)
    started = StandbyPair(folder / "pair", database="ledger")
    try:
        started.start()
        yield started
    finally:
        started.stop()
        left = [*started.primary.processes(), *started.standby.processes()]
        shutil.rmtree(folder, ignore_errors=True)
    assert not left, f"postgres processes of the pair outlived it: {left}"


@pytest.fixture(scope="module")
def pair() -> Iterator[StandbyPair]:
    yield from started_pair()


@pytest.fixture
def own_pair() -> Iterator[StandbyPair]:
    yield from started_pair()


def new_job() -> NewJob:
    return NewJob(id=str(uuid.uuid4()), task="demo.work", queue="q", payload={}, max_attempts=1)


def test_a_row_committed_on_the_primary_is_on_the_standby_at_once(pair: StandbyPair) -> None:
    primary_url = f"postgresql://postgres@127.0.0.1:{pair.primary.port}/ledger"
    with psycopg.connect(primary_url, autocommit=True) as primary:
        sync = primary.execute(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'"
        ).fetchone()
        assert sync == ("sync",)
        # The pair's synchronous_commit=on waits until the standby has flushed the commit,
        # which is what survives a failover; remote_apply waits until it has replayed it
        # too, so that a read on the standby right after the commit sees the row.
        primary.execute("SET synchronous_commit = remote_apply")
        primary.execute("CREATE TABLE notes (body text)")
        primary.execute("INSERT INTO notes VALUES ('committed')")
    with psycopg.connect(pair.replica_url) as standby:
        assert standby.execute("SELECT body FROM notes").fetchall() == [("committed",)]


def test_the_standby_refuses_writes(pair: StandbyPair) -> None:
    with psycopg.connect(pair.replica_url, autocommit=True) as standby:
        assert standby.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            standby.execute("CREATE TABLE refused (body text)")


def test_the_ledger_writes_on_the_primary_and_lists_from_the_streaming_replica(
    pair: StandbyPair,
) -> None:
    settings = load_settings(database_url=pair.url, database_replica_url=pair.replica_url)
    upgrade(settings.database)
    ledger = Ledger(settings.database, pool_size=1, replica_url=settings.database_replica)
    try:
        job = replace(new_job(), queue="replica")
        ledger.create(job)  # through the multi-host URL: a write, so on the primary
        assert ledger.direct("SELECT inet_server_port()", {}) == (pair.primary.port,)
        with ledger.lagging_session() as session:
            port = session.execute(text("SELECT inet_server_port()")).scalar_one()
        assert port == pair.standby.port
        deadline = time.monotonic() + 10  # synchronous_commit=on: flushed there, replayed soon
        while not ledger.list(queue="replica") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [listed.id for listed in ledger.list(queue="replica")] == [job.id]
    finally:
        ledger.dispose()


def test_the_multi_host_url_reaches_the_promoted_standby_after_the_primary_dies(
    pair: StandbyPair,
) -> None:
    with psycopg.connect(pair.url, autocommit=True) as connection:
        assert connection.info.port == pair.primary.port
        connection.execute("CREATE TABLE survivors (body text)")
        connection.execute("INSERT INTO survivors VALUES ('before the kill')")

    with psycopg.connect(pair.replica_url, autocommit=True) as standby:
        # As if the base backup had brought the primary's setting along: promoted with it,
        # the standby would wait on every commit for a standby it does not have.
        standby.execute("ALTER SYSTEM SET synchronous_standby_names = 'gone'")
        standby.execute("SELECT pg_reload_conf()")

    pair.kill_primary()
    assert pair.primary.processes() == []
    pair.promote()

    with psycopg.connect(pair.url, autocommit=True) as connection:
        assert connection.info.port == pair.standby.port
        assert connection.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        # Committed with synchronous_commit=on only: flushed on the standby, replayed by
        # the promotion.
        assert connection.execute("SELECT body FROM survivors").fetchall() == [("before the kill",)]
        # The promotion cleared it: a commit waits for no standby (a hang here would end
        # at the test's timeout).
        assert connection.execute("SHOW synchronous_standby_names").fetchone() == ("",)
        connection.execute("INSERT INTO survivors VALUES ('after the promotion')")


def test_after_a_switchover_the_ledger_drops_its_connections_to_the_old_primary(
    own_pair: StandbyPair,
) -> None:
    """The old primary stays up but takes no writes (demoted), the standby is promoted: the
    first write on each kind of connection is refused, and the next lands on the new
    primary. Kept, the connections would be refused until ``pool_recycle`` (30 min)."""
    settings = load_settings(database_url=own_pair.url)
    upgrade(settings.database)
    ledger = Ledger(settings.database, pool_size=1)
    try:
        queued, cancelled = new_job(), new_job()
        ledger.create(queued)  # the job path's direct connection, on the primary
        ledger.create(cancelled)
        assert ledger.cancel(cancelled.id)  # a pooled connection, on the primary
        with psycopg.connect(own_pair.primary.url, autocommit=True) as primary:
            primary.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            primary.execute("SELECT pg_reload_conf()")
        own_pair.promote()

        written = new_job()
        with pytest.raises(DBAPIError, match="read-only transaction"):
            ledger.create(written)
        ledger.create(written)
        assert ledger.direct("SELECT inet_server_port()", {}) == (own_pair.standby.port,)
        with pytest.raises(DBAPIError, match="read-only transaction"):
            ledger.cancel(queued.id)
        assert ledger.cancel(queued.id)
        with ledger.session() as session:
            port = session.execute(text("SELECT inet_server_port()")).scalar_one()
        assert port == own_pair.standby.port
    finally:
        ledger.dispose()
