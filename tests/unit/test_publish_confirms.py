"""RabbitMQ's confirms of a batch: which delivery tags are settled, and how."""

from __future__ import annotations

import pytest

from conveyor.worker.publish import _Confirms

pytestmark = pytest.mark.unit


def test_a_multiple_ack_settles_every_tag_up_to_it_and_a_nack_only_its_own() -> None:
    confirms = _Confirms(6)
    confirms.ack(3, multiple=True)
    assert (confirms.settled, confirms.complete) == ({1, 2, 3}, False)
    confirms.nack(5, multiple=False)
    confirms.ack(4, multiple=False)
    assert (confirms.settled, confirms.nacked) == ({1, 2, 3, 4, 5}, {5})
    confirms.ack(6, multiple=True)  # 5 was nacked already: it stays nacked
    assert (confirms.settled, confirms.nacked, confirms.complete) == (set(range(1, 7)), {5}, True)


def test_a_multiple_nack_marks_every_unsettled_tag_below_it() -> None:
    confirms = _Confirms(4)
    confirms.ack(2, multiple=False)
    confirms.nack(3, multiple=True)
    assert (confirms.settled, confirms.nacked) == ({1, 2, 3}, {1, 3})
