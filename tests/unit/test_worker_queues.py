"""Which queues ``conveyor worker`` consumes (``-Q``, the default queue, Celery's `celery`)."""

from __future__ import annotations

import click
import pytest

from conveyor.worker.cli.serve import consumed_queues
from conveyor.worker.constants import CELERY_QUEUE

pytestmark = pytest.mark.unit


def test_the_default_queue_brings_celerys_own() -> None:
    assert {"default", CELERY_QUEUE} <= set(consumed_queues(None, "default"))
    assert consumed_queues("jobs, default", "default") == [CELERY_QUEUE, "default", "jobs"]


def test_named_queues_without_the_default_are_consumed_as_named() -> None:
    assert consumed_queues("emails,reports,emails", "default") == ["emails", "reports"]


def test_a_queue_option_that_names_nothing_is_refused() -> None:
    with pytest.raises(click.UsageError, match="names no queue"):
        consumed_queues(" , ", "default")
