"""``ctx.progress``'s throttle and checks, on a clock the test moves by hand."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from conveyor.worker import jobs
from conveyor.worker.jobs import PROGRESS_EVERY_S, JobContext, ProgressWriter

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(jobs, "monotonic", fake)
    return fake


def context(write: ProgressWriter) -> JobContext:
    return JobContext(
        job_id="j",
        attempt=1,
        max_attempts=1,
        idempotency_key=None,
        task="t",
        queue="q",
        write_progress=write,
    )


# (seconds since the previous call, done, written?)
TIMELINE = [
    (0.0, 1, True),  # the first report is written
    (0.1, 2, False),  # 0.1 s later: throttled
    (0.3, 3, False),  # 0.4 s after the last write: throttled
    (0.1, 4, True),  # 0.5 s after it: written
    (0.0, 10, True),  # done == total: always written
    (0.0, 10, True),  # and again
]


def recording(written: list[tuple[int, int, str | None]]) -> ProgressWriter:
    def write(done: int, total: int, note: str | None) -> bool:
        written.append((done, total, note))
        return True

    return write


def test_progress_is_written_at_most_every_half_second_and_always_at_the_end(
    clock: Clock,
) -> None:
    written: list[tuple[int, int, str | None]] = []
    ctx = context(recording(written))
    for step_s, done, expected in TIMELINE:
        clock.now += step_s
        assert ctx.progress(done, 10, note=f"n{done}") is expected
    assert written == [(done, 10, f"n{done}") for _, done, kept in TIMELINE if kept]
    assert PROGRESS_EVERY_S == 0.5


@pytest.mark.parametrize(("done", "total"), [(-1, 5), (6, 5), (1, 0), (0, -1)])
def test_progress_out_of_range_is_the_jobs_error(clock: Clock, done: int, total: int) -> None:
    written: list[tuple[int, int, str | None]] = []
    with pytest.raises(ValueError, match="0 <= done <= total"):
        context(recording(written)).progress(done, total)
    assert written == []


def test_a_failed_progress_write_is_dropped_not_raised(clock: Clock) -> None:
    def down(done: int, total: int, note: str | None) -> bool:
        raise OperationalError("UPDATE", {}, Exception("connection refused"))

    assert context(down).progress(1, 2) is False


def test_a_context_without_a_ledger_reports_nothing() -> None:
    ctx = JobContext(
        job_id="j", attempt=1, max_attempts=1, idempotency_key=None, task="t", queue="q"
    )
    assert ctx.progress(1, 2) is False
