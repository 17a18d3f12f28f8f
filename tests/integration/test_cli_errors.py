"""Bad configuration and bad input: one line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import AMQP_URL, REDIS_URL, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_DATA_DIR"] = str(tmp_path / "var")
    env["CONVEYOR_TASK_MODULES"] = "conveyor.tasks.demo"  # the reference jobs load when named
    return env


def assert_one_line_error(result: object, *needles: str) -> str:
    assert result.returncode != 0  # type: ignore[attr-defined]
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("CONVEYOR_BROKER_URL", "http://127.0.0.1:5672", "unsupported scheme 'http'"),
        ("CONVEYOR_BROKER_URL", "redis://", "no host"),
        ("CONVEYOR_DATABASE_URL", "mysql://127.0.0.1/x", "unsupported scheme 'mysql'"),
        ("CONVEYOR_QUEUE_TYPE", "fancy", "'classic' or 'quorum'"),
        ("CONVEYOR_WORKER_CONCURRENCY", "-3", "greater than 0"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_variable(
    clean_env: dict[str, str], variable: str, value: str, needle: str
) -> None:
    result = run_cli("jobs", "list", env={**clean_env, variable: value})
    assert_one_line_error(result, variable, needle)


def test_visibility_timeout_shorter_than_the_time_limit_is_refused(
    clean_env: dict[str, str],
) -> None:
    env = {
        **clean_env,
        "CONVEYOR_BROKER_URL": REDIS_URL,
        "CONVEYOR_VISIBILITY_TIMEOUT_S": "60",
        "CONVEYOR_TASK_TIME_LIMIT_S": "300",
    }
    result = run_cli("worker", env=env)
    assert_one_line_error(
        result, "CONVEYOR_VISIBILITY_TIMEOUT_S (60) must exceed CONVEYOR_TASK_TIME_LIMIT_S (300)"
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("enqueue", "no.such.task", "{}"), "unknown task 'no.such.task'"),
        (("enqueue", "demo.work", "{not json"), "PAYLOAD is not valid JSON"),
        (("enqueue", "demo.work", "[1, 2]"), "must be a JSON object"),
        (("enqueue", "demo.work", '{"n": -1}'), "invalid at n"),
        (("jobs", "show", "no-such-id"), "no job with id 'no-such-id'"),
        (("jobs", "policy", "no.such.task"), "unknown task"),
    ],
)
def test_bad_input_is_one_line(
    clean_env: dict[str, str], args: tuple[str, ...], needle: str
) -> None:
    result = run_cli(*args, env=clean_env)
    assert_one_line_error(result, needle)


def test_usage_errors_exit_2_with_click_usage(clean_env: dict[str, str]) -> None:
    result = run_cli("jobs", "list", "--limit", "zero", env=clean_env)
    assert result.returncode == 2
    assert "Invalid value for '--limit'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("settings", "args", "needle"),
    [
        ({}, ("--autoscale", "4,1", "--pool", "solo"), "the solo pool cannot autoscale"),
        ({}, ("--autoscale", "1,4"), "needs 1 <= MIN <= MAX <= 256"),
        ({}, ("--autoscale", "many"), "expected MAX,MIN"),
        (
            {
                "CONVEYOR_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//",
                "CONVEYOR_QUEUES": '{"ledger": {"type": "quorum"}}',
            },
            ("-Q", "ledger,default", "--autoscale", "4,1"),
            "workers on quorum queues (ledger) cannot autoscale",
        ),
    ],
)
def test_a_worker_refuses_autoscale_where_celery_cannot_do_it(
    clean_env: dict[str, str], settings: dict[str, str], args: tuple[str, ...], needle: str
) -> None:
    result = run_cli("worker", *args, env={**clean_env, **settings})
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_database_is_one_line(clean_env: dict[str, str]) -> None:
    env = {**clean_env, "CONVEYOR_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    result = run_cli("jobs", "list", env=env)
    assert_one_line_error(result, "cannot reach the ledger database")


def test_unreachable_broker_fails_enqueue_and_leaves_no_job(clean_env: dict[str, str]) -> None:
    env = {**clean_env, "CONVEYOR_BROKER_URL": "redis://127.0.0.1:1/0"}
    result = run_cli("enqueue", "demo.work", '{"n": 1}', env=env)
    assert_one_line_error(result, "the broker did not take job")
    listed = run_cli("jobs", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "[]"


def test_unmigrated_postgres_ledger_asks_for_migrate(
    clean_env: dict[str, str], empty_pg_url: str
) -> None:
    env = {**clean_env, "CONVEYOR_DATABASE_URL": empty_pg_url, "CONVEYOR_BROKER_URL": AMQP_URL}
    result = run_cli("jobs", "list", env=env)
    assert_one_line_error(result, "run `conveyor migrate`")


def test_migrate_is_idempotent(clean_env: dict[str, str], empty_pg_url: str) -> None:
    env = {**clean_env, "CONVEYOR_DATABASE_URL": empty_pg_url}
    first = run_cli("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "migrated from empty to revision" in first.stdout
    second = run_cli("migrate", env=env)
    assert second.returncode == 0, second.stderr
    assert "already at revision" in second.stdout
    listed = run_cli("jobs", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "[]"
