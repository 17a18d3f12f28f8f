"""The single-host deployment: docker-compose.yml, the Dockerfile and .dockerignore.

No Docker engine runs here, so nothing is started: the compose file is checked with
Debian's docker-compose 1.29 (`docker-compose config`), its rendered form is checked for
what a deployment relies on, and every conveyor subcommand it runs is checked against the
real CLI.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from conveyor.config import load_settings
from conveyor.config.settings import BrokerKind

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

SERVICES = {"rabbitmq", "redis", "postgres", "migrate", "worker", "relay", "api", "flower"}
ONE_SHOT = {"migrate"}
# Where each stateful service keeps what must survive a container re-creation.
STATE_PATHS = {
    "rabbitmq": "/var/lib/rabbitmq",
    "redis": "/data",
    "postgres": "/var/lib/postgresql/data",
    "flower": "/data",
}


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    """Run docker-compose on the repository's file, with only the file's own defaults."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose is not installed: scripts/test installs it "
            "(Debian package docker-compose), or run `apt-get install docker-compose`"
        )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    """The compose file as docker-compose renders it (anchors merged, variables filled)."""
    result = compose("config")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict)
    return config


@pytest.fixture(scope="module")
def services(rendered: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = rendered.get("services")
    assert isinstance(found, dict), "the rendered compose file has no services"
    return found


def built_here(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services whose image is built from the repository's Dockerfile."""
    return {name: spec for name, spec in services.items() if "build" in spec}


def as_list(command: Any) -> list[str]:
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command or []]


def shell_text(command: Any) -> str:
    """The text a `sh -c` command runs, with compose's `$$` escapes undone."""
    return " ".join(as_list(command)).replace("$$", "$")


def volume_mounts(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each mount, for short ("src:dst[:mode]") and long syntax."""
    mounts = []
    for entry in spec.get("volumes", []):
        if isinstance(entry, dict):
            mounts.append((str(entry.get("source", "")), str(entry["target"])))
        else:
            source, _, rest = str(entry).partition(":")
            mounts.append((source, rest.split(":")[0]) if rest else ("", source))
    return mounts


def published_ports(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(host ip, host port) of each published port; ip "" means every interface."""
    ports = []
    for entry in spec.get("ports", []):
        if isinstance(entry, dict):
            if entry.get("published"):
                ports.append((str(entry.get("host_ip", "")), str(entry["published"])))
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        if len(parts) == 3:
            ports.append((parts[0], parts[1]))
        elif len(parts) == 2:
            ports.append(("", parts[0]))
        # A bare container port publishes nothing fixed on the host.
    return ports


def seconds(duration: str) -> float:
    """Seconds in a compose duration such as "6m", "1m30s" or "330s"."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def test_compose_file_is_valid() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    # Every variable has a default: nothing is silently blank.
    assert "is not set" not in result.stderr, result.stderr


def test_stack_has_every_service(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= SERVICES, f"missing: {sorted(SERVICES - set(services))}"
    assert {"migrate", "worker", "relay", "flower"} <= set(built_here(services))


def test_every_long_running_service_has_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, spec in services.items():
        if name in ONE_SHOT:
            continue
        check = spec.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"
        test = as_list(check.get("test"))
        assert test, f"{name}: healthcheck has no test"
        assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test {test}"


def test_healthchecks_probe_what_they_should(services: dict[str, dict[str, Any]]) -> None:
    def probe(name: str) -> str:
        return " ".join(as_list(services[name]["healthcheck"]["test"]))

    assert "rabbitmq-diagnostics -q ping" in probe("rabbitmq")
    assert "redis-cli ping" in probe("redis")
    assert "pg_isready" in probe("postgres")
    assert "127.0.0.1:5555/healthcheck" in probe("flower")
    for name in ("worker", "relay"):
        # Liveness from the process itself (a worker: still consuming), on its own port.
        command = as_list(services[name]["command"])
        port = command[command.index("--metrics-port") + 1]
        assert probe(name) == f"CMD conveyor health --url http://127.0.0.1:{port}", probe(name)


def test_workers_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed container_name breaks --scale"
    assert "hostname" not in worker, "copies with one hostname share one Celery node name"
    assert published_ports(worker) == [], "a fixed host port breaks --scale"


def test_worker_stops_gracefully(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    grace = seconds(str(worker.get("stop_grace_period", "10s")))
    hard_limit = int(worker["environment"]["CONVEYOR_TASK_TIME_LIMIT_S"])
    shutdown = float(worker["environment"]["CONVEYOR_SHUTDOWN_TIMEOUT_S"])
    assert shutdown > hard_limit, (
        f"CONVEYOR_SHUTDOWN_TIMEOUT_S ({shutdown:g}s) must exceed the hard time limit "
        f"({hard_limit}s) so running jobs can finish before the worker stops them"
    )
    assert grace > shutdown, (
        f"stop_grace_period ({grace:g}s) must exceed CONVEYOR_SHUTDOWN_TIMEOUT_S "
        f"({shutdown:g}s) so the worker stops on its own before SIGKILL"
    )


def test_brokers_and_database_keep_their_data(
    rendered: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(rendered.get("volumes") or {})
    for name, spec in services.items():
        for source, _target in volume_mounts(spec):
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} uses undeclared volume {source!r}"
    for name, path in STATE_PATHS.items():
        named = {target for source, target in volume_mounts(services[name]) if source in declared}
        assert path in named, f"{name} keeps {path} outside a named volume"
    redis_command = as_list(services["redis"].get("command"))
    assert "--appendonly" in redis_command, redis_command
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes", redis_command
    rabbitmq = services["rabbitmq"]
    assert "management" in rabbitmq["image"], rabbitmq["image"]
    # RabbitMQ's data directory is named after the node, i.e. the hostname.
    assert rabbitmq.get("hostname"), "rabbitmq needs a fixed hostname to find its data again"


def test_migrate_runs_once_before_the_workers(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert as_list(migrate["command"]) == ["migrate"]
    assert str(migrate.get("restart")) == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    needs = {name: dep["condition"] for name, dep in services["worker"]["depends_on"].items()}
    assert needs.get("migrate") == "service_completed_successfully", needs
    assert needs.get("rabbitmq") == "service_healthy", needs
    assert needs.get("postgres") == "service_healthy", needs


def test_flower_requires_credentials_and_listens_on_loopback(
    services: dict[str, dict[str, Any]],
) -> None:
    flower = services["flower"]
    assert "entrypoint" not in flower, "flower must run `conveyor flower` (it checks credentials)"
    command = as_list(flower["command"])
    assert command[0] == "flower", command
    assert not {"--local-dev", "--no-persistent"} & set(command), command
    assert command[command.index("--db") + 1] == "/data/flower.db", command
    assert ("flower-data", "/data") in volume_mounts(flower)
    env = {key: str(value) for key, value in flower["environment"].items()}
    assert env.get("CONVEYOR_FLOWER_USER"), env
    assert not [key for key in env if key.startswith("FLOWER_")], "Flower reads FLOWER_* itself"
    api = urlsplit(env["CONVEYOR_BROKER_API_URL"])
    assert (api.scheme, api.hostname, api.port, api.path) == ("http", "rabbitmq", 15672, "/api/")
    rabbitmq = services["rabbitmq"]["environment"]
    assert (api.username, api.password) == (
        rabbitmq["RABBITMQ_DEFAULT_USER"],
        rabbitmq["RABBITMQ_DEFAULT_PASS"],
    )
    ports = published_ports(flower)
    assert ("127.0.0.1", "5555") in ports, ports
    for service, spec in services.items():
        for host_ip, port in published_ports(spec):
            assert host_ip == "127.0.0.1", f"{service} publishes {port} on every interface"


def test_flower_refuses_to_start_without_a_password(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    flower = services["flower"]
    # The default the stack ships with is the empty password, so the refusal is what runs.
    assert flower["environment"]["CONVEYOR_FLOWER_PASSWORD"] in ("", None)
    env = {key: str(value) for key, value in flower["environment"].items() if value is not None}
    env |= {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "conveyor.worker.cli", *as_list(flower["command"])],
        cwd=tmp_path,  # no stray .env file
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "CONVEYOR_FLOWER_PASSWORD must be set" in result.stderr, result.stderr


def test_shared_environment_configures_rabbitmq_and_postgres(
    services: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env file
    for name, spec in built_here(services).items():
        env = {key: str(value) for key, value in spec["environment"].items()}
        for key in ("CONVEYOR_BROKER_URL", "CONVEYOR_DATABASE_URL", "CONVEYOR_ENV"):
            assert env.get(key), f"{name}: {key} is not set"
        assert env.get("CONVEYOR_SENTRY_DSN", "missing") == "", f"{name}: CONVEYOR_SENTRY_DSN"
        broker = urlsplit(env["CONVEYOR_BROKER_URL"])
        database = urlsplit(env["CONVEYOR_DATABASE_URL"])
        assert (broker.scheme, broker.hostname) == ("amqp", "rabbitmq")
        assert (database.scheme, database.hostname) == ("postgresql", "postgres")
        postgres = services["postgres"]["environment"]
        assert database.username == postgres["POSTGRES_USER"]
        assert database.password == postgres["POSTGRES_PASSWORD"]
        assert database.path == "/" + postgres["POSTGRES_DB"]
        rabbitmq = services["rabbitmq"]["environment"]
        assert broker.username == rabbitmq["RABBITMQ_DEFAULT_USER"]
        assert broker.password == rabbitmq["RABBITMQ_DEFAULT_PASS"]

        for key in [key for key in os.environ if key.startswith("CONVEYOR_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            if key.startswith("CONVEYOR_"):
                monkeypatch.setenv(key, value)
        settings = load_settings()
        assert settings.broker_kind is BrokerKind.RABBITMQ
        assert settings.database.startswith("postgresql+psycopg://")
        assert not settings.is_embedded


def conveyor_subcommands(services: dict[str, dict[str, Any]]) -> set[str]:
    """First word of each command run through the image's `conveyor` entrypoint."""
    commands = set()
    for spec in built_here(services).values():
        if "entrypoint" in spec:
            continue  # runs something other than conveyor
        command = as_list(spec.get("command"))
        assert command, "a service built from the Dockerfile must say which subcommand"
        commands.add(command[0])
    return commands


def dockerfile_instructions() -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each Dockerfile instruction, continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            yield keyword.upper(), rest.strip()


def test_every_conveyor_subcommand_in_the_stack_exists(
    services: dict[str, dict[str, Any]],
) -> None:
    commands = conveyor_subcommands(services)
    default_cmd = [args for keyword, args in dockerfile_instructions() if keyword == "CMD"]
    assert default_cmd, "the Dockerfile has no default CMD"
    commands.add(as_list(yaml.safe_load(default_cmd[-1]))[0])
    assert {"worker", "migrate", "relay", "api"} <= commands, commands
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONVEYOR_")}
    for command in sorted(commands):
        result = subprocess.run(
            [sys.executable, "-m", "conveyor.worker.cli", command, "--help"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"`conveyor {command} --help`: {result.stderr}"
        assert "Usage:" in result.stdout


def dockerfile_bases(instructions: list[tuple[str, str]]) -> list[str]:
    """Each FROM's image as a plain `docker build` sees it: build arguments declared before
    the first FROM at their defaults."""
    defaults: dict[str, str] = {}
    bases: list[str] = []
    for keyword, args in instructions:
        if keyword == "ARG" and not bases:
            name, _, default = args.partition("=")
            defaults[name.strip()] = default.strip().strip("\"'")
        elif keyword == "FROM":
            image = args.split()[0]
            bases.append(
                re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults.get(m[1] or m[2], m[0]), image)
            )
    return bases


def test_dockerfile_builds_an_unprivileged_conveyor_image() -> None:
    instructions = list(dockerfile_instructions())
    bases = dockerfile_bases(instructions)
    assert bases, "the Dockerfile has no FROM"
    # The base image is a build argument (ops/docker/build-local-images passes one built
    # from Debian's packages); by default, the official Python image.
    declared = [args.partition("=")[0] for keyword, args in instructions if keyword == "ARG"]
    assert "BASE_IMAGE" in declared, declared
    match = re.fullmatch(r"(?:docker\.io/)?(?:library/)?python:(\d+)\.(\d+)[\w.-]*", bases[-1])
    assert match, f"final stage is not an official Python image: {bases[-1]}"
    assert (int(match[1]), int(match[2])) >= (3, 11), bases[-1]

    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert re.search(r"pip install (\S+ )*\.(\s|$)", runs), "the package is not installed"
    copied = [args.split() for keyword, args in instructions if keyword == "COPY"]
    for args in copied:
        sources = [arg for arg in args[:-1] if not arg.startswith("--")]
        for source in sources:
            if not any(char in source for char in "*?["):
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repo"
    copied_sources = {source.rstrip("/") for args in copied for source in args[:-1]}
    assert {"pyproject.toml", "config", "worker", "tasks"} <= copied_sources, copied_sources

    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "the image runs as root"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]

    entrypoints = [args for keyword, args in instructions if keyword == "ENTRYPOINT"]
    assert entrypoints
    assert yaml.safe_load(entrypoints[-1]) == ["conveyor"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "conveyor" in scripts


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    patterns = {
        line.strip().strip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".venv", "var", ".git", "test-artifacts", ".env"):
        assert required in patterns, f".dockerignore does not exclude {required}"
    assert patterns & {"__pycache__", "**/__pycache__"}, "caches are not excluded"
