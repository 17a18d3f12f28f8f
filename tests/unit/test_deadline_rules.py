"""The deadline's rules, as data: what ``expires_in`` / ``expires_at`` become, what is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from conveyor.worker.api.schemas import BatchJob, JobCreate
from conveyor.worker.client import deadline
from conveyor.worker.errors import UsageError

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
PARIS = timezone(timedelta(hours=1))


@pytest.mark.parametrize(
    ("expires_in", "expires_at", "expected"),
    [
        (None, None, None),
        (30, None, NOW + timedelta(seconds=30)),
        (0.25, None, NOW + timedelta(seconds=0.25)),
        (timedelta(minutes=2), None, NOW + timedelta(minutes=2)),
        (None, NOW + timedelta(hours=1), NOW + timedelta(hours=1)),
        # 14:00 in UTC+1 is 13:00 UTC, stored in UTC
        (
            None,
            datetime(2026, 12, 4, 14, 0, tzinfo=PARIS),
            datetime(2026, 12, 4, 13, 0, tzinfo=UTC),
        ),
    ],
)
def test_a_deadline_becomes_one_utc_time(
    expires_in: float | timedelta | None, expires_at: datetime | None, expected: datetime | None
) -> None:
    got = deadline(expires_in, expires_at, now=NOW)
    assert got == expected
    assert got is None or got.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("expires_in", "expires_at", "message"),
    [
        (10, NOW + timedelta(hours=1), "not both"),
        (0, None, "must be > 0"),
        (-1, None, "must be > 0"),
        (timedelta(seconds=-5), None, "must be > 0"),
        (float("nan"), None, "must be > 0"),
        (True, None, "must be > 0"),
        (float("inf"), None, "too far"),
        (1e300, None, "too far"),
        (None, datetime(2026, 12, 5), "aware datetime"),  # naive
        (None, NOW, "already past"),
        (None, NOW - timedelta(microseconds=1), "already past"),
    ],
)
def test_a_bad_deadline_is_a_usage_error(
    expires_in: float | timedelta | None, expires_at: datetime | None, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        deadline(expires_in, expires_at, now=NOW)


@pytest.mark.parametrize(
    ("fields", "valid"),
    [
        ({"expires_in_s": 1}, True),
        ({"expires_in_s": 0.5}, True),
        ({"expires_at": "2099-01-01T00:00:00Z"}, True),
        ({"expires_in_s": 0}, False),
        ({"expires_in_s": -1}, False),
        ({"expires_in_s": 10**9}, False),  # beyond a year, like delay_s
        ({"expires_in_s": "5"}, False),  # strict: a number, not text
        ({"expires_at": 4102444800}, False),  # times are ISO 8601, never Unix timestamps
        ({"expires_in_s": 5, "expires_at": "2099-01-01T00:00:00Z"}, False),
    ],
)
def test_the_api_body_takes_one_well_formed_deadline(
    fields: dict[str, object], valid: bool
) -> None:
    body = {"task": "demo.work", "payload": {}} | fields
    for model in (JobCreate, BatchJob):
        if valid:
            model.model_validate(body)
        else:
            with pytest.raises(ValidationError):
                model.model_validate(body)


def test_a_batch_job_hands_its_deadline_to_the_client() -> None:
    request = BatchJob.model_validate(
        {"task": "demo.work", "payload": {}, "expires_at": "2099-01-01T01:00:00+01:00"}
    ).request()
    assert request.expires_at == datetime(2099, 1, 1, tzinfo=UTC)
    assert request.expires_in is None
    assert (
        BatchJob.model_validate({"task": "demo.work", "payload": {}, "expires_in_s": 7})
        .request()
        .expires_in
        == 7
    )
