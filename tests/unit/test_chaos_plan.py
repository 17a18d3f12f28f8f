"""The chaos planner: seeded, reproducible, and consistent with what the job will do."""

from __future__ import annotations

import pytest

from conveyor.worker.chaos.plan import CHAOS_MAX_ATTEMPTS, Mix, fails, max_delay_s, plan_jobs

pytestmark = pytest.mark.unit


def test_the_same_seed_gives_the_same_plan() -> None:
    mix = Mix(fail_p=0.3, fatal=0.05, retry_after=0.1)
    assert plan_jobs(7, 200, mix) == plan_jobs(7, 200, mix)
    assert plan_jobs(7, 200, mix) != plan_jobs(8, 200, mix)


def test_a_job_planned_to_succeed_has_an_attempt_that_does_not_fail() -> None:
    mix = Mix(fail_p=0.5)
    for plan in plan_jobs(3, 300, mix):
        outcomes = [fails(3, plan.n, a, 0.5) for a in range(1, CHAOS_MAX_ATTEMPTS + 1)]
        assert (plan.expect == "succeeded") == (not all(outcomes))
        if plan.expect == "dead":
            assert plan.reason == "exhausted"


def test_without_failures_every_job_but_the_fatal_ones_succeeds() -> None:
    plans = plan_jobs(1, 500, Mix(fatal=0.1))
    fatal = [p for p in plans if p.payload.get("fatal")]
    assert fatal
    assert all((p.expect, p.reason) == ("dead", "fatal") for p in fatal)
    assert all(p.expect == "succeeded" for p in plans if not p.payload.get("fatal"))


@pytest.mark.parametrize(
    ("attempt", "retry_after_s", "ceiling"),
    [(1, None, 0.2), (2, None, 0.4), (3, None, 0.8), (5, None, 2.0), (1, 1.5, 1.5), (2, 1.5, 0.4)],
)
def test_max_delay_follows_the_chaos_policy(
    attempt: int, retry_after_s: float | None, ceiling: float
) -> None:
    assert max_delay_s(attempt, retry_after_s) == pytest.approx(ceiling)
