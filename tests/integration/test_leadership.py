"""The relay's lease, on both ledgers (SQLite and PostgreSQL): one holder at a time, a term
per tenure, a tenure that ends by the holder's own clock, a clean hand-over."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.worker.leader import Leadership
from conveyor.worker.ledger import Ledger
from conveyor.worker.migrate import upgrade
from tests.conftest import create_ledger, drop_database

pytestmark = pytest.mark.integration

LEASE_S = 1.5
"""A holder counts itself leader for the lease less MARGIN_S (0.5 s) from before it asked:
a second left for the statement itself."""


def warmed(url: str) -> Ledger:
    """A ledger whose engine and first connection exist: a tenure is counted from before
    its statement was sent (by design), and on a loaded machine a first statement that also
    connects can outlast the tests' short lease."""
    built = Ledger(url)
    assert built.lease("relay") is None
    return built


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        upgrade(url)
        built = warmed(url)
        yield built
        built.dispose()
        return
    pg = create_ledger("conveyor_leases")
    built = warmed(pg.replace("postgresql://", "postgresql+psycopg://", 1))
    yield built
    built.dispose()
    drop_database(pg)


def claim(ledger: Ledger, holder: str) -> Leadership:
    return Leadership(ledger, holder=holder, lease_s=LEASE_S, renew_s=0)


def test_one_holder_at_a_time_and_a_new_term_at_each_change(ledger: Ledger) -> None:
    first, second = claim(ledger, "a"), claim(ledger, "b")
    assert first.hold()
    assert not second.hold(), "the lease is held"
    assert first.hold(), "the holder renews"
    assert (first.term, second.term) == (1, None)

    time.sleep(LEASE_S + 0.1)  # a holder that stopped renewing (killed, cut off)
    assert not first.leads, "its tenure ran out by its own clock"
    assert second.hold()
    assert second.term == 2
    assert not first.hold(), "the old holder cannot take it back while it is held"


def test_a_clean_stop_hands_the_lease_over_at_once(ledger: Ledger) -> None:
    first, second = claim(ledger, "a"), claim(ledger, "b")
    assert first.hold()
    first.give_up()
    assert not first.leads
    assert second.hold(), "no need to wait for the lease to expire"
    lease = ledger.lease("relay")
    assert lease is not None
    assert (lease.holder, lease.term) == ("b", 2)


def test_a_follower_that_cannot_reach_the_ledger_says_so(tmp_path: Path) -> None:
    unreachable = Ledger("postgresql+psycopg://postgres@127.0.0.1:1/none")
    follower = claim(unreachable, "a")
    assert not follower.hold()
    assert not follower.reachable
    unreachable.dispose()
