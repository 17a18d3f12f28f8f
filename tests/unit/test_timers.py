"""The worker's timer forgets cancelled entries and keeps every live one, in order."""

from __future__ import annotations

import pytest
from kombu.asynchronous.timer import Timer

from conveyor.worker.timers import compact

pytestmark = pytest.mark.unit


def test_compacting_drops_cancelled_entries_and_keeps_the_schedule() -> None:
    timer = Timer()
    fired: list[int] = []
    # Job n's entry is due after (100 - n) s: the last scheduled is the first due.
    entries = [timer.call_after(100 - n, fired.append, (n,)) for n in range(100)]
    for index, entry in enumerate(entries):
        if index % 10:
            entry.cancel()
    assert len(timer) == 100

    assert compact(timer) == 90
    assert len(timer) == 10
    assert [event.entry.args[0] for event in timer.queue] == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert compact(timer) == 0  # nothing left to drop

    soon = timer.call_after(0, fired.append, (-1,))
    wait, due = next(iter(timer))
    assert (wait, due) == (None, soon)  # the heap still yields the soonest entry first
    due()
    assert fired == [-1]
