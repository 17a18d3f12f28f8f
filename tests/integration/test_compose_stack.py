"""The compose stack for real: docker-compose.yml started in Docker, a job through the API,
and a worker container stopped while it runs jobs.

Runs where dockerd is running and skips, saying so, where `docker info` fails (CI starts
no dockerd). No registry is needed: ops/docker/build-local-images makes every image here
(Debian's debootstrap, then `docker build`), cached by a hash of its inputs.
ops/docker/compose.hostnet.yml puts every service on the host's network (no bridge: the
traffic stays on 127.0.0.1) and on free ports chosen here, away from the PostgreSQL, Redis
and RabbitMQ this machine already runs. docker-compose 1.29 refuses published ports on
the host's network and an override file cannot remove the compose file's, so the two
files are rendered with `docker-compose config` and started without their `ports`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
OVERRIDE = ROOT / "ops" / "docker" / "compose.hostnet.yml"
BUILD_SCRIPT = ROOT / "ops" / "docker" / "build-local-images"

BUILD_TIMEOUT_S = 1500  # a first build (debootstrap, apt, pip) took about 2.5 min here
UP_TIMEOUT_S = 600
HEALTHY_TIMEOUT_S = 300
JOB_TIMEOUT_S = 120
ONE_SHOT = {"migrate"}
WORKERS = 2
BATCH = 12
WORK_MS = 2000  # per job: with 2 x 2 worker processes, a batch lasts about 3 rounds
FLOWER_PASSWORD = "compose-stack-test"

# The ports of this machine's own services (and the stack's defaults): never used here.
TAKEN = {4369, 5432, 5555, 5672, 6379, 8000, 9808, 9809, 15672, 25672, *range(35672, 35683)}
# Below Linux's ephemeral range (32768-60999), so no outgoing connection takes one meanwhile.
PORT_RANGE = range(20000, 30000)
PORTS = (
    "POSTGRES",
    "REDIS",
    "RABBITMQ",
    "RABBITMQ_MANAGEMENT",
    "RABBITMQ_DIST",
    "EPMD",
    "API",
    "FLOWER",
    "RELAY_METRICS",
)
CLI_PORTS = 5  # RabbitMQ's CLI tools: one distribution port each while they run

# Run inside the api container: prints the new key's token.
CREATE_KEY = ("conveyor", "apikey", "create", "stack-test", "--scope=enqueue", "--scope=read")
RECEIVED = re.compile(r"Task demo\.work\[([0-9a-f-]{36})\] received")


def require_dockerd() -> None:
    """Skip, saying why, unless a Docker engine answers."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("dockerd is not running: there is no docker command on PATH")
    try:
        info = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("dockerd is not running: `docker info` did not answer in 30 s")
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines()
        pytest.skip(f"dockerd is not running: `docker info` failed: {lines[-1] if lines else ''}")
    if shutil.which("docker-compose") is None:
        pytest.fail(
            "docker-compose is not installed: scripts/test installs it "
            "(Debian package docker-compose), or run `apt-get install docker-compose`"
        )


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(size: int) -> int:
    """The first port of `size` consecutive free ports in PORT_RANGE, none of them TAKEN."""
    start = PORT_RANGE.start + (uuid.uuid4().int % 400) * 20  # spread concurrent runs
    for offset in range(0, len(PORT_RANGE), size):
        first = PORT_RANGE.start + (start - PORT_RANGE.start + offset) % len(PORT_RANGE)
        block = range(first, first + size)
        fits = block.stop <= PORT_RANGE.stop and not TAKEN & set(block)
        if fits and all(port_is_free(port) for port in block):
            return first
    pytest.fail(f"no {size} consecutive free ports in {PORT_RANGE}")


def stack_ports() -> dict[str, str]:
    """HOSTNET_*_PORT variables for compose.hostnet.yml: free ports, one block."""
    first = free_port_block(len(PORTS) + CLI_PORTS)
    ports = {f"HOSTNET_{name}_PORT": str(first + index) for index, name in enumerate(PORTS)}
    cli_first = first + len(PORTS)
    ports["HOSTNET_RABBITMQ_CLI_PORT_MIN"] = str(cli_first)
    ports["HOSTNET_RABBITMQ_CLI_PORT_MAX"] = str(cli_first + CLI_PORTS - 1)
    return ports


def build_images() -> dict[str, str]:
    """Run ops/docker/build-local-images; its NAME=IMAGE lines."""
    try:
        built = subprocess.run(
            [str(BUILD_SCRIPT)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{BUILD_SCRIPT.name} took over {BUILD_TIMEOUT_S} s: {exc.stderr!r:.2000}")
    assert built.returncode == 0, f"{BUILD_SCRIPT.name} failed:\n{built.stderr[-4000:]}"
    images = {
        name: image
        for name, _, image in (line.partition("=") for line in built.stdout.splitlines())
        if re.fullmatch(r"\w+", name) and image
    }
    expected = {
        "CONVEYOR_IMAGE",
        "HOSTNET_POSTGRES_IMAGE",
        "HOSTNET_REDIS_IMAGE",
        "HOSTNET_RABBITMQ_IMAGE",
    }
    assert set(images) == expected, built.stdout
    return images


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Stack:
    """One compose project, started from the rendered compose file."""

    project: str
    file: Path
    env: dict[str, str]
    ports: dict[str, str]

    def compose(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["docker-compose", "-f", str(self.file), "-p", self.project, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert result.returncode == 0, (
                f"docker-compose {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def containers(self, service: str) -> list[str]:
        listed = self.compose("ps", "-q", "--all", service).stdout.split()
        return sorted(listed)

    def port(self, name: str) -> int:
        return int(self.ports[f"HOSTNET_{name}_PORT"])


def render(env: dict[str, str], directory: Path, ports: dict[str, str]) -> Path:
    """docker-compose.yml and the override as one file, without published ports."""
    rendered = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "-f", str(OVERRIDE), "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    config: dict[str, Any] = yaml.safe_load(rendered.stdout)
    for name, spec in config["services"].items():
        assert spec.get("network_mode") == "host", f"{name} is not on the host's network"
        spec.pop("ports", None)
        environment = spec.get("environment") or {}
        for key in ("CONVEYOR_BROKER_URL", "CONVEYOR_DATABASE_URL"):
            if key in environment:
                # Service names do not resolve on the host's network; the shared services'
                # ports are never used.
                assert "@127.0.0.1:" in environment[key], f"{name}: {key}"
    broker_url = config["services"]["worker"]["environment"]["CONVEYOR_BROKER_URL"]
    assert f"127.0.0.1:{ports['HOSTNET_RABBITMQ_PORT']}/" in broker_url
    path = directory / "compose.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def state(container: str) -> dict[str, Any]:
    inspected = docker("inspect", "--format", "{{json .State}}", container)
    assert inspected.returncode == 0, inspected.stderr
    found: dict[str, Any] = json.loads(inspected.stdout)
    return found


def wait_until_healthy(stack: Stack, services: list[str]) -> None:
    """Every long-running service's containers healthy, the one-shot ones exited 0."""
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    waiting: dict[str, str] = {}
    while time.monotonic() < deadline:
        waiting = {}
        for service in services:
            containers = stack.containers(service)
            if not containers:
                waiting[service] = "no container"
            for container in containers:
                found = state(container)
                if service in ONE_SHOT:
                    if found["Status"] != "exited":
                        waiting[service] = found["Status"]
                    else:
                        assert found["ExitCode"] == 0, f"{service} exited {found['ExitCode']}"
                    continue
                assert found["Status"] == "running", f"{service} {container[:12]}: {found}"
                health = found.get("Health", {}).get("Status")
                if health != "healthy":
                    waiting[f"{service} {container[:12]}"] = str(health)
        if not waiting:
            return
        time.sleep(1)
    pytest.fail(f"not healthy after {HEALTHY_TIMEOUT_S} s: {waiting}")


def log_lines(container: str) -> list[str]:
    logs = docker("logs", container)
    assert logs.returncode == 0, logs.stderr
    return (logs.stdout + logs.stderr).splitlines()


def received(container: str) -> set[str]:
    """Ids of the demo jobs this worker container received."""
    return {match[1] for line in log_lines(container) for match in RECEIVED.finditer(line)}


def succeeded(container: str) -> dict[str, datetime]:
    """Ids of the jobs this worker container ran to success, with when it logged it."""
    ran = {}
    for line in log_lines(container):
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "job.succeeded":
            ran[event["job_id"]] = datetime.fromisoformat(event["timestamp"])
    return ran


def wait_for(
    api: httpx.Client, job_ids: list[str], timeout_s: float = JOB_TIMEOUT_S
) -> dict[str, dict[str, Any]]:
    """Each job as GET /v1/jobs/{id} answers once it is finished."""
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for job_id in [job_id for job_id in job_ids if job_id not in done]:
            answer = api.get(f"/v1/jobs/{job_id}")
            assert answer.status_code == 200, answer.text
            job: dict[str, Any] = answer.json()
            if job["state"] in ("succeeded", "dead", "cancelled"):
                done[job_id] = job
        if len(done) == len(job_ids):
            return done
        time.sleep(0.5)
    unfinished = sorted(set(job_ids) - set(done))
    pytest.fail(f"{len(unfinished)} of {len(job_ids)} jobs unfinished after {timeout_s} s")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The compose stack, up and healthy with two workers; always torn down after."""
    require_dockerd()
    images = build_images()
    ports = stack_ports()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        **{key: value for key, value in os.environ.items() if key.startswith("DOCKER_")},
        **images,
        **ports,
        "FLOWER_PASSWORD": FLOWER_PASSWORD,
    }
    project = f"conveyor-stack-{uuid.uuid4().hex[:8]}"
    started = Stack(project, render(env, tmp_path, ports), env, ports)
    try:
        started.compose(
            "up", "-d", "--no-build", "--scale", f"worker={WORKERS}", timeout=UP_TIMEOUT_S
        )
        services = list(yaml.safe_load(started.file.read_text())["services"])
        wait_until_healthy(started, services)
        yield started
    finally:
        # Shown when the test fails: what ran and how it ended.
        print(started.compose("ps", "--all", check=False).stdout)
        print(started.compose("logs", "--no-color", "--tail=60", check=False).stdout[-20000:])
        down = started.compose("down", "-v", "--remove-orphans", "-t", "10", check=False)
        assert down.returncode == 0, down.stderr


def test_a_job_runs_and_a_stopped_workers_jobs_finish_elsewhere(stack: Stack) -> None:
    key = stack.compose("exec", "-T", "api", *CREATE_KEY)
    token = key.stdout.strip().splitlines()[0]
    assert token.startswith("cvk_"), key.stdout
    base_url = f"http://127.0.0.1:{stack.port('API')}"
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as api:
        # One job through the API, to success.
        answer = api.post("/v1/jobs", json={"task": "demo.work", "payload": {"n": 7}})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        job = wait_for(api, [job_id])[job_id]
        assert job["state"] == "succeeded", job
        assert job["result"] == {"n": 7, "square": 49, "attempt": 1}, job

        # A batch of slower jobs; one worker container stops while it runs some of them.
        jobs = [
            {"task": "demo.work", "payload": {"n": n, "work_ms": WORK_MS}}
            for n in range(100, 100 + BATCH)
        ]
        answer = api.post("/v1/jobs:batch", json={"jobs": jobs})
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"] == BATCH, answer.text
        batch = [item["id"] for item in answer.json()["items"]]

        workers = stack.containers("worker")
        assert len(workers) == WORKERS, workers
        victim, running = pick_busy_worker(workers, set(batch))
        survivor = next(worker for worker in workers if worker != victim)
        # Its own grace period (stop_grace_period): SIGTERM, a warm shutdown, then exit.
        stopped_at = datetime.now().astimezone()
        stop = docker("stop", victim, timeout=420)
        assert stop.returncode == 0, stop.stderr
        ended = state(victim)
        assert (ended["Status"], ended["ExitCode"]) == ("exited", 0), (
            f"the worker did not stop gracefully (137 is SIGKILL): {ended}"
        )

        finished = wait_for(api, batch)
    states = {job_id: job["state"] for job_id, job in finished.items()}
    assert set(states.values()) == {"succeeded"}, states
    # Those it was running when it was told to stop too (a warm shutdown lets them finish).
    assert {states[job_id] for job_id in running} == {"succeeded"}
    assert all(finished[job_id]["result"]["n"] >= 100 for job_id in batch)

    by_victim = set(succeeded(victim)) & set(batch)
    by_survivor = succeeded(survivor)
    # Each job ran to success once, on one worker or the other.
    assert by_victim.isdisjoint(by_survivor), by_victim & set(by_survivor)
    assert by_victim | set(by_survivor) >= set(batch), set(batch) - by_victim - set(by_survivor)
    # The rest of the batch ran elsewhere, after the stop.
    after_stop = {job_id for job_id, at in by_survivor.items() if at > stopped_at}
    assert after_stop & set(batch), (by_victim, by_survivor, stopped_at)
    assert state(survivor)["Health"]["Status"] == "healthy"


def pick_busy_worker(workers: list[str], batch: set[str]) -> tuple[str, set[str]]:
    """A worker container running batch jobs while others still wait; the ones it runs."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        taken: set[str] = set()
        busy: dict[str, set[str]] = {}
        for worker in workers:
            got = received(worker) & batch
            taken |= got
            busy[worker] = got - set(succeeded(worker))
        waiting = batch - taken
        for worker, running in busy.items():
            if running and len(waiting) >= 2:
                return worker, running
        assert len(waiting) >= 2, "the batch was taken before a worker could be stopped"
        time.sleep(0.2)
    pytest.fail(f"no worker started a batch job within {JOB_TIMEOUT_S} s")
