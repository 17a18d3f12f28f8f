"""Every chaos scenario on both brokers through the real `conveyor chaos` CLI.

Each run starts its own workers and relay (and its own broker or database where the
scenario breaks one), injects the scenario's faults, and checks the invariants: nothing
lost, every effect exactly once, the dead-letter queue exactly as planned, retry delays
within the policy, no process left behind.

Two sizes, the same checks: the `chaos` tier runs each scenario at CI size (100 jobs)
in the default run; the `full` tier (`scripts/test --full`) runs it at 2,000 jobs and
writes each report to test-artifacts/full/, from which `python -m tests.chaos.report`
makes the table of docs/chaos.md.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest
import redis
from kombu.connection import Connection

from conveyor.worker.chaos.scenarios import SCENARIOS
from conveyor.worker.cli.chaos import DEFAULT_REDIS, SKIPPED
from tests.chaos.report import FULL_JOBS, FULL_SEED, FULL_TIMEOUT_S, save_report
from tests.conftest import AMQP_URL, PG_ADMIN_URL, SHORT_LEASE_S, forget_unacked, run_cli

CI_JOBS = 100
"""Jobs per CI run: enough for every scenario to inject its faults many times over; the
full tier runs 2,000."""
CI_FAULTS = 10
"""Faults per CI run at most: the scenarios that inject one a second (worker-kill,
worker-term, network) would otherwise keep the run going for minutes after 10 of them
have shown what they show. Full-size runs are not bounded."""
LEASE_BOUND = {"partition"}
"""Scenarios whose length is set by the job lease: a partition lasts the lease and 5 s more,
for the cut-off host's jobs to run elsewhere. At CI size their runs set
``CONVEYOR_JOB_LEASE_S`` to the tests' short lease (each cut 8 s instead of 15 s). The
others keep the default 10 s. worker-kill and leader-kill recover leases too, but their
length is set by worker restarts (measured: no shorter with a 3 s lease, docs/testing.md);
an outage of the ledger (db-outage, ledger-failover) stops the heartbeats for longer than
a short lease would last. Full-size runs keep the default everywhere."""
NO_CONFIRMED_LOSS = {"rabbitmq-node-loss", "ledger-failover"}
"""Scenarios whose replication is synchronous: what was confirmed before the fault must
all be there after it (quorum queues; a synchronous standby). Redis replicates
asynchronously and may lose messages (the relay republishes them)."""
FAULTY = {
    "worker-kill",
    "leader-kill",
    "worker-term",
    "partition",
    "redis-failover",
    "ledger-failover",
    "rabbitmq-node-loss",
    "rabbitmq-rolling-restart",
    "broker-restart",
    "db-outage",
    "network",
}
EVERY_RUN = [
    pytest.param(name, broker, id=f"{name}-{broker}")
    for name in sorted(SCENARIOS)
    for broker in SCENARIOS[name].brokers
]
DEFAULT_RUN = [run for run in EVERY_RUN if SCENARIOS[str(run.values[0])].in_default_run]


def delete_run_queues(stderr: str) -> None:
    """Delete the queue a run left on the shared broker, and its `.dead` queue.

    A run names its queue ``chaos-RUN_ID`` and says its id on stderr ("run RUN_ID: ...");
    only that queue is deleted, never another run's (one may run from another checkout).
    """
    found = re.search(r"^run (\S+): broker", stderr, re.MULTILINE)
    if found is None:
        return
    names = [f"chaos-{found.group(1)}", f"chaos-{found.group(1)}.dead"]
    if "-redis-" in found.group(1):
        forget_unacked(DEFAULT_REDIS, names)  # a killed worker's messages in hand
        client = redis.Redis.from_url(DEFAULT_REDIS)
        for name in names:
            client.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
        client.close()
        return
    with Connection(AMQP_URL) as connection:
        channel = connection.default_channel
        for name in names:
            channel.queue_delete(name)
            channel.exchange_delete(name)


def chaos_run(
    scenario: str,
    broker: str,
    jobs: int,
    seed: int,
    *,
    timeout_s: float | None = None,
    max_faults: int | None = None,
    lease_s: str | None = None,
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    if lease_s is not None:  # the run's own app and every process it starts read it
        env["CONVEYOR_JOB_LEASE_S"] = lease_s
    bound = ("--timeout", str(timeout_s)) if timeout_s else ()
    if max_faults is not None:
        bound = (*bound, "--max-faults", str(max_faults))
    result = run_cli(
        *("chaos", "run", scenario, "--broker", broker, "--jobs", str(jobs), "--seed", str(seed)),
        *("--pg-url", PG_ADMIN_URL, "--amqp-url", AMQP_URL, "--json", *bound),
        env=env,
        timeout_s=(timeout_s or 800) + 50,
    )
    delete_run_queues(result.stderr)
    if result.returncode == SKIPPED:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.stdout.strip(), result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == (0 if report["ok"] else 1)
    return report


def assert_every_promise_held(report: dict[str, Any], scenario: str, jobs: int) -> None:
    assert report["violations"] == []
    assert report["lost"] == 0
    assert report["duplicated_effects"] == 0
    assert report["succeeded"] + report["dead"] == jobs + round(
        jobs * SCENARIOS[scenario].poison_share
    )
    if scenario in FAULTY:
        assert sum(report["faults"].values()) > 0, "the scenario injected no fault"
    if scenario in NO_CONFIRMED_LOSS:
        figures = report["figures"]
        assert figures.get("messages_lost", figures.get("committed_lost")) == 0, figures
    if scenario == "poison":
        assert report["dead"] == round(jobs * 0.05)
    if scenario == "flaky":
        assert report["retries"] > 0
        assert report["dead"] > 0


def ci_size_run(scenario: str, broker: str) -> None:
    lease_s = SHORT_LEASE_S if scenario in LEASE_BOUND else None
    report = chaos_run(scenario, broker, CI_JOBS, seed=11, max_faults=CI_FAULTS, lease_s=lease_s)
    assert_every_promise_held(report, scenario, CI_JOBS)


@pytest.mark.chaos
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("scenario", "broker"), DEFAULT_RUN)
def test_scenario_keeps_every_promise(scenario: str, broker: str) -> None:
    ci_size_run(scenario, broker)


@pytest.mark.full
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("scenario", "broker"), [r for r in EVERY_RUN if r not in DEFAULT_RUN])
def test_a_scenario_too_long_for_the_default_run_keeps_every_promise_at_ci_size(
    scenario: str, broker: str
) -> None:
    ci_size_run(scenario, broker)


@pytest.mark.full
@pytest.mark.timeout(FULL_TIMEOUT_S + 300)
@pytest.mark.parametrize(("scenario", "broker"), EVERY_RUN)
def test_scenario_keeps_every_promise_at_full_size(scenario: str, broker: str) -> None:
    report = chaos_run(scenario, broker, FULL_JOBS, seed=FULL_SEED, timeout_s=FULL_TIMEOUT_S)
    save_report(report)  # before the checks: a failed run's figures are the ones to read
    assert_every_promise_held(report, scenario, FULL_JOBS)
