"""The deployment artefacts: Kubernetes and KEDA manifests, systemd units, the runbook.

Offline and fast. The Kustomize base is rendered here from its kustomization's
`resources` and checked with kubernetes-validate against Kubernetes' own schemas; KEDA's
objects against tests/schemas/keda-v1alpha1.schema.json, derived from KEDA's CRDs; the
systemd units with `systemd-analyze verify` and a strict parse of their own. Then what a
deployment relies on: every routed queue has consumers, probes reach the ports served,
grace periods outlast the graceful shutdown, budgets select real pods, the Secret holds no
credential, and every `conveyor` command the artefacts and the runbook name exists in the
real CLI.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from conveyor.config import load_settings
from conveyor.config.settings import Settings
from conveyor.worker.ledger import Ledger
from conveyor.worker.models import Base, Job, JobState
from conveyor.worker.observability.metrics import LedgerCollector

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "ops" / "k8s"
BASE = K8S / "base"
KEDA = K8S / "keda"
OVERLAY = K8S / "overlays" / "example"
SYSTEMD = ROOT / "ops" / "systemd"
SYSTEMD_ENV = SYSTEMD / "env"
RUNBOOK = ROOT / "ops" / "RUNBOOK.md"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
COMPOSE_FILE = ROOT / "docker-compose.yml"
KEDA_SCHEMA = ROOT / "tests" / "schemas" / "keda-v1alpha1.schema.json"

# A version kubernetes-validate ships schemas for, offline.
KUBERNETES_VERSION = "1.30.0"
NAMESPACE = "conveyor"
IMAGE = "conveyor:latest"
CLUSTER_SCOPED = {"Namespace"}
# The Kustomize fields render_kustomization() implements; any other fails the test.
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources"}

SECRET_KEYS = {
    "CONVEYOR_BROKER_URL",
    "CONVEYOR_DATABASE_URL",
    "CONVEYOR_METRICS_TOKEN",
    "CONVEYOR_SENTRY_DSN",
    "FLOWER_PASSWORD",
}
PLACEHOLDER = "REPLACE_ME"
# What a pasted credential tends to look like: long runs of token characters, or the
# prefixes of well-known key formats.
TOKEN_LIKE = re.compile(r"[A-Za-z0-9+/_=-]{20,}|AKIA[0-9A-Z]{12}|ghp_|glpat-|sk_live_|xox[bap]-")

SLOW_QUEUE = "slow"
# The commands being added alongside these artefacts; the runbook must name them all.
NEW_COMMANDS = {("scale",), ("scale", "apply"), ("queues", "pause"), ("queues", "resume")}
# The situations the runbook must cover, by heading anchor.
RUNBOOK_SITUATIONS = {
    "dead-letter-triage-and-replay",
    "scaling-up-and-down",
    "pausing-a-queue",
    "a-broker-outage",
    "a-database-outage",
    "a-stuck-or-slow-queue",
    "a-retry-storm",
    "a-deploy",
    "a-worker-that-is-alive-but-not-consuming",
    "a-worker-that-keeps-restarting",
}
# Long-running units, and the one-shot they all wait for.
SERVICES = {
    "conveyor-worker@.service",
    "conveyor-relay.service",
    "conveyor-api.service",
    "conveyor-flower.service",
}
MIGRATE_UNIT = "conveyor-migrate.service"
# systemd keys that may appear more than once in a section.
REPEATABLE_KEYS = {"EnvironmentFile", "Environment", "After", "Requires", "Wants", "ReadWritePaths"}

Object = dict[str, Any]


# --- loading and rendering ----------------------------------------------------------------


def load_documents(path: Path) -> list[Object]:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert all(isinstance(doc, dict) for doc in documents), f"{path}: not a list of objects"
    return documents


def kustomization(directory: Path) -> Object:
    loaded = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert isinstance(loaded, dict), directory
    return loaded


def render_kustomization(directory: Path) -> list[Object]:
    """What `kustomize build DIRECTORY` makes of a kustomization that uses only
    KUSTOMIZE_FIELDS: its resources (files or kustomizations), in the namespace it names,
    with its labels added to each object's own metadata."""
    spec = kustomization(directory)
    unknown = set(spec) - KUSTOMIZE_FIELDS
    assert not unknown, f"{directory}: render_kustomization() does not implement {unknown}"
    assert spec["kind"] == "Kustomization", directory
    objects: list[Object] = []
    for entry in spec["resources"]:
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory}: resource {entry} does not exist"
        objects += render_kustomization(path) if path.is_dir() else load_documents(path)
    for obj in objects:
        metadata = obj.setdefault("metadata", {})
        if "namespace" in spec and obj["kind"] not in CLUSTER_SCOPED:
            metadata["namespace"] = spec["namespace"]
        for label in spec.get("labels", []):
            assert not label.get("includeSelectors"), "selector labels are not rendered here"
            metadata.setdefault("labels", {}).update(label["pairs"])
            if label.get("includeTemplates") and "template" in obj.get("spec", {}):
                template = obj["spec"]["template"].setdefault("metadata", {})
                template.setdefault("labels", {}).update(label["pairs"])
    return objects


@pytest.fixture(scope="module")
def base() -> list[Object]:
    return render_kustomization(BASE)


def of_kind(objects: Iterable[Object], kind: str) -> dict[str, Object]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def one(objects: Iterable[Object], kind: str) -> Object:
    [found] = of_kind(objects, kind).values()
    return found


def component_documents() -> dict[str, list[Object]]:
    """Every KEDA component's files, by component name."""
    found: dict[str, list[Object]] = {}
    for directory in sorted(path for path in KEDA.iterdir() if path.is_dir()):
        spec = kustomization(directory)
        assert spec["kind"] == "Component", directory
        listed = {directory / entry for entry in spec["resources"]}
        files = set(directory.glob("*.yaml")) - {directory / "kustomization.yaml"}
        assert listed == files, f"{directory}: files and resources differ"
        found[directory.name] = [doc for path in sorted(listed) for doc in load_documents(path)]
    return found


@pytest.fixture(scope="module")
def components() -> dict[str, list[Object]]:
    found = component_documents()
    assert {"rabbitmq", "redis", "backlog-age"} <= set(found), set(found)
    return found


def is_keda(obj: Object) -> bool:
    return str(obj.get("apiVersion", "")).startswith("keda.sh/")


# --- pods, containers and the conveyor commands they run ----------------------------------


def pod_spec(obj: Object) -> Object:
    spec: Object = obj["spec"]["template"]["spec"]
    return spec


def containers(obj: Object) -> list[Object]:
    """Every container of a workload's pods, init containers first."""
    spec = pod_spec(obj)
    return [*spec.get("initContainers", []), *spec["containers"]]


def workloads(objects: Iterable[Object]) -> dict[str, Object]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] in ("Deployment", "Job")}


def worker_deployments(objects: Iterable[Object]) -> dict[str, Object]:
    return {
        name: obj
        for name, obj in of_kind(objects, "Deployment").items()
        if main_args(obj)[:1] == ["worker"]
    }


def main_container(obj: Object) -> Object:
    [first, *_] = pod_spec(obj)["containers"]
    assert isinstance(first, dict)
    return first


def main_args(obj: Object) -> list[str]:
    return [str(arg) for arg in main_container(obj).get("args", [])]


def option(args: list[str], *names: str) -> str | None:
    """The value of the first of ``names`` in ``args`` (``-Q x`` or ``--queues=x``)."""
    for index, arg in enumerate(args):
        for name in names:
            if arg == name and index + 1 < len(args):
                return args[index + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def effective_env(container: Object, configmaps: dict[str, Object]) -> dict[str, str]:
    """A container's plain environment: its ConfigMaps (envFrom), then its own values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= configmaps[source["configMapRef"]["name"]]["data"]
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
    return env


def conveyor_argv_in_container(container: Object) -> list[list[str]]:
    """The `conveyor` command lines a container runs: its args through the image's
    ENTRYPOINT, or those inside a `sh -c` script."""
    command = [str(part) for part in container.get("command", [])]
    if not command:
        return [[str(arg) for arg in container.get("args", [])]]
    assert command[:2] == ["sh", "-c"], f"{container['name']}: runs {command}, not conveyor"
    return conveyor_invocations(command[2])


# --- shell text: the conveyor invocations in a script or a code block ---------------------

# A "conveyor" after one of these is a value (a namespace, a user, a group), not a command.
VALUE_FLAGS = {"-n", "--namespace", "-u", "-g", "-o", "--user", "--group"}
OPERATORS = re.compile(r"^[|&;()<>]+$")


def conveyor_invocations(script: str) -> list[list[str]]:
    """The argument lists of every `conveyor` (or `.../bin/conveyor`) command in ``script``."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        for index, token in enumerate(tokens):
            previous = tokens[index - 1] if index else ""
            if (token == "conveyor" or token.endswith("/bin/conveyor")) and (
                previous not in VALUE_FLAGS
            ):
                rest = tokens[index + 1 :]
                end = next((i for i, t in enumerate(rest) if OPERATORS.match(t)), len(rest))
                found.append(rest[:end])
    return found


def code_blocks(markdown: str, languages: tuple[str, ...] = ("sh", "bash", "")) -> Iterator[str]:
    """The text of each fenced code block in one of ``languages``."""
    for match in re.finditer(r"^ *```(\w*)\n(.*?)^ *```", markdown, re.MULTILINE | re.DOTALL):
        if match.group(1) in languages:
            yield match.group(2)


# --- the real CLI ---------------------------------------------------------------------------

RESOLVE_SCRIPT = """
import json, sys
import click
from conveyor.worker.cli import cli

results = []
for argv in json.load(sys.stdin):
    path = []
    try:
        command, ctx = cli, cli.make_context("conveyor", list(argv))
        while isinstance(command, click.Group):
            rest = [*ctx._protected_args, *ctx.args]
            if not rest:
                if not command.invoke_without_command:
                    raise click.UsageError("a subcommand is missing", ctx=ctx)
                break
            name, command, rest = command.resolve_command(ctx, rest)
            path.append(name)
            ctx = command.make_context(name, rest, parent=ctx)
        usage = ctx.get_help().splitlines()[0]
        results.append({"argv": argv, "path": path, "usage": usage, "error": None})
    except click.ClickException as exc:
        results.append({"argv": argv, "path": path, "usage": None, "error": exc.format_message()})
print(json.dumps(results))
"""


def cli_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("CONVEYOR_")}


def resolve(argvs: list[list[str]]) -> list[dict[str, Any]]:
    """Parse each command line with the real CLI's parser (click's, in a subprocess,
    without running anything): its command path and the first line of that command's
    help, or the usage error `conveyor` would print."""
    result = subprocess.run(
        [sys.executable, "-c", RESOLVE_SCRIPT],
        input=json.dumps(argvs),
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    resolved: list[dict[str, Any]] = json.loads(result.stdout)
    return resolved


def help_of(path: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor.worker.cli", *path, "--help"],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


ROUTES_SCRIPT = """
import importlib, json, sys
request = json.load(sys.stdin)
for name in request["modules"]:
    importlib.import_module(name)
from conveyor.worker.cli.serve import consumed_queues
from conveyor.worker.jobs import REGISTRY
default = request["default_queue"]
print(json.dumps({
    "routes": {name: spec.queue or default for name, spec in REGISTRY.items()},
    "consumed": [consumed_queues(option, default) for option in request["options"]],
}))
"""


@dataclass(frozen=True)
class Routing:
    routes: dict[str, str]  # job name: the queue it goes to
    consumed: list[set[str]]  # per worker command line, in order: the queues it consumes


def routing(modules: list[str], default_queue: str, options: list[str | None]) -> Routing:
    """Where the jobs of ``modules`` go, and what a worker with each `-Q` option (None: no
    option) consumes, as `conveyor worker` computes it."""
    result = subprocess.run(
        [sys.executable, "-c", ROUTES_SCRIPT],
        input=json.dumps({"modules": modules, "default_queue": default_queue, "options": options}),
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    return Routing(loaded["routes"], [set(queues) for queues in loaded["consumed"]])


def modules_of(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


# --- systemd ------------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values]}}; refuses what systemd would only warn
    about: a line outside a section, a line that is not KEY=VALUE, a repeated key."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        where = f"{path.name}:{number}"
        if section := re.fullmatch(r"\[(\w+)\]", stripped):
            assert section.group(1) not in sections, f"{where}: section repeated"
            current = sections.setdefault(section.group(1), {})
            continue
        assert current is not None, f"{where}: outside a section"
        key_value = re.fullmatch(r"([A-Za-z]+)=(.*)", stripped)
        assert key_value, f"{where}: not KEY=VALUE: {stripped!r}"
        key, value = key_value.groups()
        assert key not in current or key in REPEATABLE_KEYS, f"{where}: {key} repeated"
        current.setdefault(key, []).append(value)
    return sections


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, separator, value = line.partition("=")
            assert separator, f"{path}: {line!r}"
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path}: {line!r}"
            env[key] = value
    return env


def worker_instances() -> dict[str, dict[str, str]]:
    """Each example worker instance (env/worker-NAME.env), with its environment:
    conveyor.env, then its own file, as the unit reads them."""
    shared = read_env_file(SYSTEMD_ENV / "conveyor.env")
    return {
        path.stem.removeprefix("worker-"): shared | read_env_file(path)
        for path in sorted(SYSTEMD_ENV.glob("worker-*.env"))
    }


def unit_commands() -> list[list[str]]:
    """The `conveyor` command line of every unit (worker instances expanded)."""
    argvs = []
    for path in sorted(SYSTEMD.glob("*.service")):
        [exec_start] = parse_unit(path)["Service"]["ExecStart"]
        if "%i" in path.name or "@" in path.name:
            for instance, env in worker_instances().items():
                text = exec_start.replace("%i", instance).replace("%H", "host")
                argvs += conveyor_invocations(expand(text, env))
        else:
            argvs += conveyor_invocations(exec_start)
    return argvs


def expand(text: str, env: dict[str, str]) -> str:
    """``text`` with systemd's ``${NAME}`` replaced from ``env``."""
    for name in re.findall(r"\$\{(\w+)\}", text):
        assert name in env, f"${{{name}}} is set in no env file"
        text = text.replace(f"${{{name}}}", env[name])
    return text


def seconds(value: str) -> float:
    """Seconds in a systemd time span: "45", "45s", "15min", "1min 30s"."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+)\s*([a-z]*)", value)
    assert parts, f"not a time span: {value!r}"
    return sum(int(number) * units[unit] for number, unit in parts)


# --- Kubernetes schemas -------------------------------------------------------------------


def test_base_renders_every_file_once(base: list[Object]) -> None:
    listed = {BASE / entry for entry in kustomization(BASE)["resources"]}
    files = set(BASE.glob("*.yaml")) - {BASE / "kustomization.yaml"}
    assert listed == files, f"files not in resources: {files - listed}"
    keys = [(obj["kind"], obj["metadata"]["name"]) for obj in base]
    assert len(keys) == len(set(keys)), "an object is defined twice"
    assert of_kind(base, "Namespace").keys() == {NAMESPACE}
    for obj in base:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
    kinds = {obj["kind"] for obj in base}
    assert kinds == {
        "Namespace",
        "Secret",
        "ConfigMap",
        "Job",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }, kinds
    assert set(of_kind(base, "Deployment")) == {
        "conveyor-worker-default",
        "conveyor-worker-slow",
        "conveyor-relay",
        "conveyor-api",
        "conveyor-flower",
    }


def test_every_kubernetes_manifest_validates(
    base: list[Object], components: dict[str, list[Object]]
) -> None:
    objects = base + [obj for docs in components.values() for obj in docs if not is_keda(obj)]
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{where}: {path}: {exc.message}")
    # The schemas are strict: a misspelt field fails, it is not silently dropped.
    broken = copy.deepcopy(of_kind(base, "Deployment")["conveyor-worker-default"])
    probe = main_container(broken)["livenessProbe"]
    probe["httpGett"] = probe.pop("httpGet")
    with pytest.raises(kubernetes_validate.ValidationError, match="httpGett"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kubectl_renders_the_base_as_the_test_does(base: list[Object]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the base is rendered by the test itself)")
    result = subprocess.run(
        [kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(result.stdout)}
    ours = {(o["kind"], o["metadata"]["name"]): o for o in base}
    assert theirs == ours


def test_overlay_renders_with_kubectl_and_validates() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    objects = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
    validator = keda_validator()
    for obj in objects:
        if is_keda(obj):
            validator.validate(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    # The real Secret is made outside the repository: the overlay must not apply the template.
    assert not of_kind(objects, "Secret"), "the overlay applies the Secret template"
    scalers = of_kind(objects, "ScaledObject").values()
    scaled = {so["spec"]["scaleTargetRef"]["name"] for so in scalers}
    for name, deployment in of_kind(objects, "Deployment").items():
        # KEDA owns the replica count of what it scales; a re-apply must not reset it.
        assert ("replicas" in deployment["spec"]) == (name not in scaled), name
        for container in containers(deployment):
            assert container["image"] != IMAGE, f"{name}: the overlay does not set the image"


# --- KEDA -----------------------------------------------------------------------------------


def keda_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(KEDA_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_keda_objects_validate_against_the_crd_schema(
    components: dict[str, list[Object]],
) -> None:
    validator = keda_validator()
    keda = [obj for docs in components.values() for obj in docs if is_keda(obj)]
    assert {obj["kind"] for obj in keda} == {"ScaledObject", "TriggerAuthentication"}
    for obj in keda:
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
        assert errors == [], f"{obj['kind']}/{obj['metadata']['name']}"

    # The schema bites: each of these is a mistake KEDA or the API server would refuse.
    [scaled] = of_kind(components["rabbitmq"], "ScaledObject").values()
    mistakes: list[tuple[str, Any]] = [
        ("number, not string", lambda so: so["spec"]["triggers"][0]["metadata"].update(value=20)),
        ("unknown field", lambda so: so["spec"].update(maxReplicas=3)),
        ("no queue", lambda so: so["spec"]["triggers"][0]["metadata"].pop("queueName")),
        ("bad mode", lambda so: so["spec"]["triggers"][0]["metadata"].update(mode="Length")),
        ("no target", lambda so: so["spec"].pop("scaleTargetRef")),
        ("apiVersion", lambda so: so.update(apiVersion="keda.sh/v1")),
    ]
    for what, change in mistakes:
        broken = copy.deepcopy(scaled)
        change(broken)
        assert not validator.is_valid(broken), f"the schema accepts a ScaledObject with {what}"


def test_keda_components_target_what_exists(
    base: list[Object], components: dict[str, list[Object]]
) -> None:
    deployments = of_kind(base, "Deployment")
    for name, docs in components.items():
        secrets = of_kind(base + docs, "Secret")
        auths = of_kind(docs, "TriggerAuthentication")
        scaled = of_kind(docs, "ScaledObject")
        assert scaled, f"{name}: no ScaledObject"
        for auth in auths.values():
            for ref in auth["spec"].get("secretTargetRef", []):
                secret = secrets.get(ref["name"])
                assert secret, f"{name}: no Secret {ref['name']}"
                assert ref["key"] in secret["stringData"], f"{name}: no key {ref['key']}"
        for so in scaled.values():
            target = so["spec"]["scaleTargetRef"]
            assert target.get("kind", "Deployment") == "Deployment"
            assert target["name"] in worker_deployments(base), f"{name}: {target['name']}"
            assert so["spec"]["minReplicaCount"] >= 1, "a worker class scaled to zero"
            for trigger in so["spec"]["triggers"]:
                if "authenticationRef" in trigger:
                    assert trigger["authenticationRef"]["name"] in auths, name
        for patch in kustomization(KEDA / name).get("patches", []):
            assert patch["target"]["name"] in deployments, f"{name}: patches {patch['target']}"
    # The two broker components are alternatives: the example overlay uses one of them.
    used = {Path(entry).name for entry in kustomization(OVERLAY)["components"]}
    assert len(used & {"rabbitmq", "redis"}) == 1, used


def queues_of(deployment: Object, default_queue: str) -> set[str]:
    args = main_args(deployment)
    listed = option(args, "-Q", "--queues")
    assert listed, f"{deployment['metadata']['name']}: a worker class must list its queues (-Q)"
    names = {name.strip() for name in listed.split(",") if name.strip()}
    return names | ({"celery"} if default_queue in names else set())


def test_broker_triggers_cover_every_queue_of_their_workers(
    base: list[Object], components: dict[str, list[Object]]
) -> None:
    default_queue = one(base, "ConfigMap")["data"]["CONVEYOR_DEFAULT_QUEUE"]
    workers = worker_deployments(base)
    for name, key in (("rabbitmq", "queueName"), ("redis", "listName")):
        [so] = of_kind(components[name], "ScaledObject").values()
        triggers = so["spec"]["triggers"]
        assert {trigger["type"] for trigger in triggers} == {name}, name
        watched = {trigger["metadata"][key] for trigger in triggers}
        target = workers[so["spec"]["scaleTargetRef"]["name"]]
        assert watched == queues_of(target, default_queue), name
    for trigger in of_kind(components["rabbitmq"], "ScaledObject").popitem()[1]["spec"]["triggers"]:
        # Every mode but QueueLength needs RabbitMQ's management API.
        assert trigger["metadata"]["mode"] == "QueueLength"
        assert trigger["metadata"].get("protocol", "auto") == "amqp"
    # Redis's scaler is a plain LLEN of one list: the file says what that leaves out.
    text = (KEDA / "redis" / "scaledobject.yaml").read_text()
    for caveat in ("LLEN", "unacked", "priority", "prefix", "relay"):
        assert caveat in text, f"redis/scaledobject.yaml does not explain {caveat!r}"


@pytest.fixture(scope="module")
def ledger_gauges(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """The ledger gauges' names and labels, as LedgerCollector serves them from a real
    SQLite ledger holding one queued job."""
    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}")
    Base.metadata.create_all(ledger.engine)
    with ledger.transaction() as session:
        session.add(
            Job(id="j1", task="t", queue="q", state=JobState.QUEUED, max_attempts=1, payload={})
        )
    gauges: dict[str, set[str]] = {}
    for family in LedgerCollector(ledger).collect():
        for sample in family.samples:
            gauges.setdefault(sample.name, set()).update(sample.labels)
    ledger.dispose()
    assert "conveyor_queue_oldest_job_age_seconds" in gauges, gauges
    return gauges


def test_prometheus_triggers_query_real_gauges(
    base: list[Object], components: dict[str, list[Object]], ledger_gauges: dict[str, set[str]]
) -> None:
    default_queue = one(base, "ConfigMap")["data"]["CONVEYOR_DEFAULT_QUEUE"]
    [so] = of_kind(components["backlog-age"], "ScaledObject").values()
    target = worker_deployments(base)[so["spec"]["scaleTargetRef"]["name"]]
    consumed = queues_of(target, default_queue)
    used = set()
    for trigger in so["spec"]["triggers"]:
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        selectors = re.findall(r"\b(conveyor_\w+)\s*(?:\{([^}]*)\})?", query)
        assert selectors, query
        for metric, matchers in selectors:
            assert metric in ledger_gauges, f"no such gauge: {metric}"
            used.add(metric)
            labels = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', matchers))
            assert set(labels) <= ledger_gauges[metric], f"{metric} has no label in {labels}"
            assert labels.get("queue") in consumed, f"{query}: a queue its workers do not consume"
    assert "conveyor_queue_oldest_job_age_seconds" in used


# --- queues and their consumers -----------------------------------------------------------


def compose_default(value: str) -> str:
    """``${NAME:-default}`` → default, as docker-compose fills it with nothing set."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_every_routed_queue_has_consumers(base: list[Object]) -> None:
    config = one(base, "ConfigMap")["data"]
    default_queue = config["CONVEYOR_DEFAULT_QUEUE"]
    workers = worker_deployments(base)
    assert set(workers) == {"conveyor-worker-default", "conveyor-worker-slow"}
    options = [option(main_args(obj), "-Q", "--queues") for obj in workers.values()]
    instances = worker_instances()
    options += [env["WORKER_QUEUES"] for env in instances.values()]
    found = routing(modules_of(config["CONVEYOR_TASK_MODULES"]), default_queue, options)
    routed = set(found.routes.values())
    assert {"default", "webhooks"} <= routed, found.routes
    deployments, units = found.consumed[: len(workers)], found.consumed[len(workers) :]
    assert all(deployments), "a worker Deployment consumes nothing"
    assert all(units), "a worker instance consumes nothing"
    assert routed | {SLOW_QUEUE} <= set().union(*deployments), found.consumed
    assert routed | {SLOW_QUEUE} <= set().union(*units), found.consumed
    assert "celery" in set().union(*deployments), "nobody consumes Celery's default queue"
    # Every queue the settings declare is consumed by a worker Deployment, and the
    # declaration is one the settings accept.
    declared = load_settings(
        broker_url="amqp://guest@rabbitmq//", queues=json.loads(config["CONVEYOR_QUEUES"])
    ).queues
    assert declared, "the ConfigMap declares no queue"
    assert set(declared) <= set().union(*deployments), (declared, found.consumed)
    # The slow class is one job at a time per process, nothing reserved ahead.
    slow = workers["conveyor-worker-slow"]
    assert option(main_args(slow), "-Q", "--queues") == SLOW_QUEUE
    assert option(main_args(slow), "-c", "--concurrency") == "1"
    env = effective_env(main_container(slow), of_kind(base, "ConfigMap"))
    assert env["CONVEYOR_PREFETCH_MULTIPLIER"] == "1"
    assert instances[SLOW_QUEUE]["CONVEYOR_WORKER_CONCURRENCY"] == "1"
    assert instances[SLOW_QUEUE]["CONVEYOR_PREFETCH_MULTIPLIER"] == "1"

    # The compose stack's workers, with the file's own defaults.
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    shared = compose["x-conveyor-env"]
    compose_workers = {
        name: spec
        for name, spec in compose["services"].items()
        if [str(part) for part in spec.get("command", [])][:1] == ["worker"]
    }
    assert compose_workers, "docker-compose.yml runs no worker"
    for name, spec in compose_workers.items():
        env = {key: compose_default(str(value)) for key, value in shared.items()}
        env |= {k: compose_default(str(v)) for k, v in (spec.get("environment") or {}).items()}
        command = [str(part) for part in spec["command"]]
        stack = routing(
            modules_of(env["CONVEYOR_TASK_MODULES"]),
            env.get("CONVEYOR_DEFAULT_QUEUE", "default"),
            [option(command, "-Q", "--queues")],
        )
        assert set(stack.routes.values()) <= stack.consumed[0], f"compose {name}: {stack}"


# --- probes, ports, grace -----------------------------------------------------------------


def container_ports(container: Object) -> dict[str | int, int]:
    """Each port a container declares, by name and by number."""
    ports: dict[str | int, int] = {}
    for port in container.get("ports", []):
        ports[port["containerPort"]] = port["containerPort"]
        if "name" in port:
            ports[port["name"]] = port["containerPort"]
    return ports


# The option that tells each subcommand which port to serve.
SERVED_PORT_OPTION = {
    "worker": "--metrics-port",
    "relay": "--metrics-port",
    "api": "--port",
    "flower": "--port",
}
HEALTH = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
PROBE_PATHS = {
    "worker": {**HEALTH, "startupProbe": "/healthz"},
    "relay": {**HEALTH, "startupProbe": "/healthz"},
    "api": HEALTH,
    "flower": {"livenessProbe": "/healthcheck", "readinessProbe": "/healthcheck"},
}


def test_probes_reach_the_ports_each_container_serves(base: list[Object]) -> None:
    config = one(base, "ConfigMap")["data"]
    # Probes come from the kubelet, on the pod's address: loopback-only would fail them.
    assert config["CONVEYOR_METRICS_ADDRESS"] == "0.0.0.0"
    for name, deployment in of_kind(base, "Deployment").items():
        container = main_container(deployment)
        args = main_args(deployment)
        subcommand = args[0]
        served = option(args, SERVED_PORT_OPTION[subcommand])
        assert served, f"{name}: `conveyor {subcommand}` is not told its port"
        ports = container_ports(container)
        assert set(ports.values()) == {int(served)}, f"{name}: declares {ports}, serves {served}"
        if subcommand in ("api", "flower"):
            address = option(args, "--host", "--address")
            assert address == "0.0.0.0", f"{name}: listens on {address}"
        expected = PROBE_PATHS[subcommand]
        assert {key for key in expected if key in container} == set(expected), name
        for probe_name, path in expected.items():
            probe = container[probe_name]["httpGet"]
            assert probe["path"] == path, f"{name}: {probe_name} {probe['path']}"
            assert ports.get(probe["port"]) == int(served), f"{name}: {probe_name} port"
    services = of_kind(base, "Service")
    assert set(services) == {"conveyor-api", "conveyor-flower"}
    for name, service in services.items():
        selector = service["spec"]["selector"]
        selected = [d for d in of_kind(base, "Deployment").values() if selects(selector, d)]
        assert len(selected) == 1, f"Service {name} selects {len(selected)} Deployments"
        ports = container_ports(main_container(selected[0]))
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: {port['targetPort']}"


def shutdown_timeout_s(env: dict[str, str]) -> float:
    value = env.get("CONVEYOR_SHUTDOWN_TIMEOUT_S")
    assert value, "CONVEYOR_SHUTDOWN_TIMEOUT_S is not set where the grace period is"
    return float(value)


def test_grace_periods_outlast_the_graceful_shutdown(base: list[Object]) -> None:
    configmaps = of_kind(base, "ConfigMap")
    graces = []
    for name, deployment in worker_deployments(base).items():
        env = effective_env(main_container(deployment), configmaps)
        timeout = shutdown_timeout_s(env)
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        graces.append(grace)
        assert grace == 45, f"{name}: terminationGracePeriodSeconds {grace}"
        assert grace > timeout, f"{name}: grace {grace}s must exceed the shutdown {timeout}s"
        # A draining worker stops consuming: liveness must not kill it within the grace.
        liveness = main_container(deployment)["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace, name
    # The settings' own default keeps within the grace too.
    default = Settings.model_fields["shutdown_timeout_s"].default
    assert isinstance(default, int | float)
    assert default < min(graces), default

    unit = parse_unit(SYSTEMD / "conveyor-worker@.service")["Service"]
    [stop] = unit["TimeoutStopSec"]
    for instance, env in worker_instances().items():
        timeout = shutdown_timeout_s(env)
        assert seconds(stop) > timeout, f"worker@{instance}: TimeoutStopSec {stop}"


def test_relay_runs_twice(base: list[Object]) -> None:
    relay = of_kind(base, "Deployment")["conveyor-relay"]
    assert relay["spec"]["replicas"] == 2
    assert main_args(relay)[0] == "relay"
    assert option(main_args(relay), "--metrics-port") == "9809"


def selects(selector: dict[str, str], deployment: Object) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector.items())


def test_disruption_budgets_select_existing_pods(base: list[Object]) -> None:
    deployments = of_kind(base, "Deployment")
    covered = set()
    for name, budget in of_kind(base, "PodDisruptionBudget").items():
        selector = budget["spec"]["selector"]
        assert set(selector) == {"matchLabels"}, name
        selected = {d for d, obj in deployments.items() if selects(selector["matchLabels"], obj)}
        assert len(selected) == 1, f"PodDisruptionBudget {name} selects {selected or 'nothing'}"
        [target] = selected
        assert deployments[target]["spec"]["selector"]["matchLabels"] == selector["matchLabels"]
        covered.add(target)
        if "minAvailable" in budget["spec"]:
            # A budget that no pod may leave would block every node drain.
            assert budget["spec"]["minAvailable"] < deployments[target]["spec"]["replicas"], name
        else:
            assert budget["spec"]["maxUnavailable"] >= 1, name
    assert covered >= set(worker_deployments(base)) | {"conveyor-relay", "conveyor-api"}
    for name, deployment in deployments.items():
        template = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], deployment), name
        assert template.get("app.kubernetes.io/component"), name


# --- pods: security, resources, image, the migration gate ---------------------------------


def test_pods_run_unprivileged_and_bounded(base: list[Object]) -> None:
    for name, workload in workloads(base).items():
        spec = pod_spec(workload)
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] == 10001, name
        assert security["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for container in containers(workload):
            where = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where
            assert container["image"] == IMAGE, where
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            for path in ("/app/var", "/tmp"):
                assert path in mounts, f"{where}: {path} is not writable"
                assert "emptyDir" in volumes[mounts[path]], f"{where}: {path}"


def test_migrations_run_as_a_job_and_gate_every_service(base: list[Object]) -> None:
    job = one(base, "Job")
    assert main_args(job) == ["migrate"]
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")
    for name, deployment in of_kind(base, "Deployment").items():
        gates = [
            argv
            for container in pod_spec(deployment).get("initContainers", [])
            for argv in conveyor_argv_in_container(container)
        ]
        # `conveyor health` fails while the ledger's schema is not this image's.
        assert ["health"] in gates, f"{name}: no init container waits for the migration"


def secret_key_refs(objects: Iterable[Object]) -> Iterator[tuple[str, Object]]:
    for name, workload in workloads(objects).items():
        for container in containers(workload):
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    yield f"{name}/{container['name']}/{entry['name']}", ref


def test_secrets_and_settings_are_wired(base: list[Object]) -> None:
    secret = one(base, "Secret")
    config = one(base, "ConfigMap")
    assert "data" not in secret, "the template keeps its placeholders readable (stringData)"
    assert set(secret["stringData"]) >= SECRET_KEYS
    for where, ref in secret_key_refs(base):
        assert ref["name"] == secret["metadata"]["name"], where
        assert ref["key"] in secret["stringData"], f"{where}: no key {ref['key']}"
    for name, workload in workloads(base).items():
        for container in containers(workload):
            names = [entry["name"] for entry in container.get("env", [])]
            assert len(names) == len(set(names)), f"{name}: an env variable twice"
            # FLOWER_* variables are Flower's own options: they go in under CONVEYOR_ names.
            assert not [n for n in names if n.startswith("FLOWER_")], name
            assert "envFrom" not in container or all(
                "secretRef" not in source for source in container["envFrom"]
            ), f"{name}: the whole Secret goes into the environment"
    for key in config["data"]:
        assert key.startswith("CONVEYOR_"), key
        assert key not in SECRET_KEYS, f"{key} belongs in the Secret"
    # Every setting the ConfigMap names exists (a misspelt one would be ignored silently).
    known = {f"CONVEYOR_{name.upper()}" for name in Settings.model_fields}
    assert set(config["data"]) <= known, set(config["data"]) - known


def placeholder_problems(where: str, value: str) -> Iterator[str]:
    """What makes ``value`` look like a real credential rather than a placeholder."""
    if not value:
        return
    if "://" in value:
        password = urlsplit(value).password
        if password is not None and password != PLACEHOLDER:
            yield f"{where}: a password that is not {PLACEHOLDER}"
    elif value != PLACEHOLDER and not re.fullmatch(r"[\w.:/-]+", value):
        yield f"{where}: {value!r} is neither a placeholder nor a plain setting"
    if TOKEN_LIKE.search(value.replace(PLACEHOLDER, "")):
        yield f"{where}: something that looks like a token"


def test_secret_templates_hold_no_credentials(
    base: list[Object], components: dict[str, list[Object]]
) -> None:
    objects = base + [obj for docs in components.values() for obj in docs]
    secrets = [obj for obj in objects if obj["kind"] == "Secret"]
    assert len(secrets) == 2
    problems: list[str] = []
    for secret in secrets:
        values = secret["stringData"]
        for key, value in values.items():
            problems += placeholder_problems(f"{secret['metadata']['name']}.{key}", str(value))
        # A template says it is one, and every secret in it is marked.
        assert any(PLACEHOLDER in str(value) for value in values.values())
    for key in ("CONVEYOR_BROKER_URL", "CONVEYOR_DATABASE_URL", "FLOWER_PASSWORD"):
        assert PLACEHOLDER in one(base, "Secret")["stringData"][key], key
    for path in (SYSTEMD_ENV / "conveyor.env", SYSTEMD_ENV / "flower.env"):
        for key, value in read_env_file(path).items():
            if re.search(r"URL|PASSWORD|TOKEN|DSN|SECRET", key):
                problems += placeholder_problems(f"{path.name}:{key}", value)
    assert problems == []
    # The check itself: a pasted credential fails it.
    assert list(placeholder_problems("x", "amqp://conveyor:hunter2@rabbitmq:5672//"))
    assert list(placeholder_problems("x", "3f9a8c1e0b7d4a6f9e2c5b8a1d4f7e0c"))


# --- systemd --------------------------------------------------------------------------------


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the strict parse below still runs)")
    conveyor = Path(sys.executable).with_name("conveyor")
    assert conveyor.exists(), conveyor
    units = []
    for path in sorted(SYSTEMD.glob("*.service")):
        # ExecStart must name an executable that exists: the one installed here.
        text = path.read_text().replace("/opt/conveyor/bin/conveyor", str(conveyor))
        (tmp_path / path.name).write_text(text)
        units.append(tmp_path / path.name)
    for instance in worker_instances():
        link = tmp_path / f"conveyor-worker@{instance}.service"
        link.symlink_to(tmp_path / "conveyor-worker@.service")
        units.append(link)
    units.remove(tmp_path / "conveyor-worker@.service")  # a template is verified by instance
    result = subprocess.run(
        [analyze, "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify warns (unknown keys, bad values) without failing: any output is a finding.
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_systemd_units_supervise_and_confine_conveyor() -> None:
    units = {path.name: parse_unit(path) for path in sorted(SYSTEMD.glob("*.service"))}
    assert set(units) == SERVICES | {MIGRATE_UNIT}
    data_dir = read_env_file(SYSTEMD_ENV / "conveyor.env")["CONVEYOR_DATA_DIR"]
    binaries = set()
    for name, unit in units.items():
        service = unit["Service"]

        def get(key: str, service: dict[str, list[str]] = service) -> str:
            [value] = service.get(key, [""])
            return value

        binaries.add(shlex.split(get("ExecStart"))[0])
        assert get("User") == "conveyor", name
        for key, value in {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "PrivateTmp": "yes",
            "WorkingDirectory": data_dir,
        }.items():
            assert get(key) == value, f"{name}: {key}={get(key)}"
        assert data_dir in service["ReadWritePaths"], name
        assert service["EnvironmentFile"][0] == "/etc/conveyor/conveyor.env", name
        for env_file in service["EnvironmentFile"]:
            examples = [env_file.replace("%i", i) for i in worker_instances()] or [env_file]
            for example in examples:
                assert (SYSTEMD_ENV / Path(example).name).exists(), f"{name}: {example}"
        assert unit["Install"]["WantedBy"] == ["multi-user.target"], name
        if name == MIGRATE_UNIT:
            assert (get("Type"), get("RemainAfterExit")) == ("oneshot", "yes")
            continue
        assert get("Restart") == "always", name
        assert seconds(get("RestartSec")) > 0, name
        assert get("KillSignal") == "SIGTERM", name
        # SIGTERM to the main process only; the rest of the group gets SIGKILL at the end.
        assert get("KillMode") == "mixed", name
        assert seconds(get("TimeoutStopSec")) > 0, name
        assert MIGRATE_UNIT in unit["Unit"]["Requires"], name
        assert MIGRATE_UNIT in " ".join(unit["Unit"]["After"]), name
    assert len(binaries) == 1, binaries
    worker = units["conveyor-worker@.service"]["Service"]
    assert worker["EnvironmentFile"] == [
        "/etc/conveyor/conveyor.env",
        "/etc/conveyor/worker-%i.env",
    ]
    # One metrics port per instance on a host, none taken by another unit.
    taken = {9809, 8000, 5555}
    ports = [int(env["CONVEYOR_METRICS_PORT"]) for env in worker_instances().values()]
    assert len(set(ports)) == len(ports), ports
    assert not set(ports) & taken, ports
    assert {"default", SLOW_QUEUE} <= set(worker_instances())


# --- the runbook and the commands it names ------------------------------------------------


def github_anchors(markdown: str) -> set[str]:
    """Heading anchors as GitHub makes them (outside code fences)."""
    anchors = set()
    in_fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (heading := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            anchors.add(re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-"))
    return anchors


def test_runbook_covers_every_situation_and_its_links_resolve() -> None:
    text = RUNBOOK.read_text()
    anchors = github_anchors(text)
    assert anchors >= RUNBOOK_SITUATIONS, RUNBOOK_SITUATIONS - anchors
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        path, _, anchor = target.partition("#")
        if re.match(r"\w+://", path):
            continue
        if path:
            assert (RUNBOOK.parent / path).exists(), f"RUNBOOK.md links to missing {path}"
        else:
            assert anchor in anchors, f"RUNBOOK.md links to missing #{anchor}"
    doc = DEPLOYMENT_DOC.read_text()
    doc_anchors = github_anchors(doc)
    assert {"kubernetes", "a-plain-host-with-systemd"} <= doc_anchors, doc_anchors
    assert "../ops/RUNBOOK.md" in doc


def named_conveyor_commands(base: list[Object]) -> dict[str, list[list[str]]]:
    """Every `conveyor` command line in the manifests, the units and the runbook, by where."""
    named: dict[str, list[list[str]]] = {}
    for name, workload in workloads(base).items():
        for container in containers(workload):
            named[f"{name}/{container['name']}"] = conveyor_argv_in_container(container)
    named["systemd units"] = unit_commands()
    named["RUNBOOK.md"] = [
        argv for block in code_blocks(RUNBOOK.read_text()) for argv in conveyor_invocations(block)
    ]
    return named


def test_every_conveyor_command_named_exists(base: list[Object]) -> None:
    named = named_conveyor_commands(base)
    assert len(named["RUNBOOK.md"]) > 30, "the runbook's commands were not found"
    argvs = [argv for argvs in named.values() for argv in argvs]
    resolved = resolve(argvs)
    errors = [f"conveyor {shlex.join(r['argv'])}: {r['error']}" for r in resolved if r["error"]]
    paths = {tuple(r["path"]) for r in resolved if not r["error"]}
    missing_new = sorted(" ".join(path) for path in NEW_COMMANDS - paths)
    assert not errors, "\n".join(errors)
    assert not missing_new, f"the runbook does not use: {missing_new}"

    for r in resolved:
        usage = f"Usage: conveyor {' '.join(r['path'])}"
        assert r["usage"].startswith(usage + " "), f"{usage!r}, yet its help says {r['usage']!r}"

    # The new commands also from the command line, as an operator would ask.
    with ThreadPoolExecutor(max_workers=4) as pool:
        new = sorted(NEW_COMMANDS)
        helps = dict(zip(new, pool.map(help_of, new), strict=True))
    for path, result in helps.items():
        usage = f"Usage: conveyor {' '.join(path)}"
        assert result.returncode == 0, f"`conveyor {' '.join(path)} --help`: {result.stderr}"
        assert result.stdout.startswith(usage + " "), f"{usage!r} not in {result.stdout[:200]!r}"

    # `celery -A MODULE` in the runbook names a module that exists.
    modules = set(re.findall(r"celery -A ([\w.]+)", RUNBOOK.read_text()))
    assert modules == {"conveyor.worker.celery_app"}, modules
    assert all(importlib.util.find_spec(module) for module in modules)


def test_command_extraction_finds_commands_and_nothing_else() -> None:
    script = (
        "kubectl -n conveyor exec deploy/conveyor-api -- conveyor queues --json  # a comment\n"
        "docker-compose exec api conveyor dlq show JOB_ID | less\n"
        "until conveyor health; do sleep 5; done\n"
        "sudo -u conveyor /opt/conveyor/bin/conveyor scale apply --worker w@h \\\n"
        "  --grow 2 && echo done\n"
    )
    assert conveyor_invocations(script) == [
        ["queues", "--json"],
        ["dlq", "show", "JOB_ID"],
        ["health"],
        ["scale", "apply", "--worker", "w@h", "--grow", "2"],
    ]
