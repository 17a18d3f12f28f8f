"""Every chaos scenario on both brokers, at CI size, through the real `conveyor chaos` CLI.

Each run starts its own workers and relay (and its own broker or database where the
scenario breaks one), injects the scenario's faults, and checks the invariants: nothing
lost, every effect exactly once, the dead-letter queue exactly as planned, retry delays
within the policy, no process left behind. The full-size figures are in docs/chaos.md.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from conveyor.worker.chaos.scenarios import SCENARIOS
from tests.conftest import AMQP_URL, PG_ADMIN_URL, run_cli

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

CI_JOBS = {"worker-kill": 150, "broker-restart": 150, "db-outage": 150, "network": 150}
"""Jobs per CI run; the scenarios that break a service run a little smaller."""
FAULTY = {"worker-kill", "worker-term", "broker-restart", "db-outage", "network"}


def chaos_run(scenario: str, broker: str, jobs: int, seed: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    result = run_cli(
        *("chaos", "run", scenario, "--broker", broker, "--jobs", str(jobs), "--seed", str(seed)),
        *("--pg-url", PG_ADMIN_URL, "--amqp-url", AMQP_URL, "--json"),
        env=env,
        timeout_s=850,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == (0 if report["ok"] else 1)
    return report


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_keeps_every_promise(scenario: str, broker: str) -> None:
    jobs = CI_JOBS.get(scenario, 200)
    report = chaos_run(scenario, broker, jobs, seed=11)
    assert report["violations"] == []
    assert report["lost"] == 0
    assert report["duplicated_effects"] == 0
    assert report["succeeded"] + report["dead"] == jobs + round(
        jobs * SCENARIOS[scenario].poison_share
    )
    if scenario in FAULTY:
        assert sum(report["faults"].values()) > 0, "the scenario injected no fault"
    if scenario == "poison":
        assert report["dead"] == round(jobs * 0.05)
    if scenario == "flaky":
        assert report["retries"] > 0
        assert report["dead"] > 0
