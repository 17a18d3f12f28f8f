"""How a Conveyor task ends when its job did not succeed (worker/runtime.py's table).

The endings cross from a prefork pool process to the worker's main process pickled, so
they must survive pickling with their message; none of them may become a Sentry event
of its own; and every job's Celery task declares the dead letter an expected failure.
"""

from __future__ import annotations

import pickle
from typing import Any, cast

import pytest
from celery.exceptions import Retry

from conveyor.config.celery import task_options
from conveyor.worker.errors import DeadLettered, Ended, Redundant, RetryScheduled
from conveyor.worker.observability.sentry import FILTERED, before_send

pytestmark = pytest.mark.unit

ENDINGS = [
    DeadLettered("builtins.RuntimeError: dead-lettered (exhausted)"),
    RetryScheduled("builtins.RuntimeError: attempt 1 of 3 failed, next attempt in 2.0s"),
    Redundant("skipped: the job is succeeded"),
]


def across_the_pool(value: Any) -> Any:
    """``value`` as the worker's main process gets it from a pool process (pickled)."""
    return pickle.loads(pickle.dumps(value))  # noqa: S301 - our own bytes, as billiard's


@pytest.mark.parametrize("ending", ENDINGS, ids=lambda ending: type(ending).__name__)
def test_each_ending_pickles_with_its_message(ending: Ended) -> None:
    copy = across_the_pool(ending)
    assert (type(copy), str(copy)) == (type(ending), str(ending))


def test_a_scheduled_retry_crosses_the_pool_inside_celerys_retry() -> None:
    scheduled = ENDINGS[1]
    retry = across_the_pool(Retry(str(scheduled), exc=scheduled))
    # The worker's main process sends `repr(retry.exc)` as the task-retried event's exception.
    assert isinstance(retry.exc, RetryScheduled)
    assert "builtins.RuntimeError" in repr(retry.exc)
    assert str(retry) == str(scheduled)


def sentry_event() -> dict[str, Any]:
    return {"exception": {"values": [{"type": "X", "value": "gate sk_live_1 is closed"}]}}


@pytest.mark.parametrize("ending", ENDINGS, ids=lambda ending: type(ending).__name__)
def test_before_send_drops_every_ending(ending: Ended) -> None:
    hint = {"exc_info": (type(ending), ending, None)}
    assert before_send(cast(Any, sentry_event()), cast(Any, hint)) is None


def test_before_send_keeps_real_errors_and_scrubs_them() -> None:
    error = RuntimeError("gate sk_live_1 is closed")
    sent = before_send(
        cast(Any, sentry_event()), cast(Any, {"exc_info": (RuntimeError, error, None)})
    )
    assert sent is not None
    assert sent["exception"]["values"][0]["value"] == FILTERED
    assert before_send(cast(Any, sentry_event()), cast(Any, {})) is not None


def test_a_jobs_task_declares_its_dead_letter_an_expected_failure() -> None:
    options = task_options(name="x.y", queue=None, timeout_s=1, throws=(DeadLettered,))
    assert options["throws"] == (DeadLettered,)
    assert task_options(name="x.y", queue=None, timeout_s=1)["throws"] == ()
