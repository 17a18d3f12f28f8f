"""Monitoring in ops/: alert rules, their unit tests and runbook, the scrape config, the dashboard.

promtool (Debian's `prometheus` package, installed by scripts/test) checks the rules and
the scrape config and runs the rules' unit tests for real. The dashboard's and the rules'
PromQL may only name metrics that exist: Conveyor's as worker.observability.metrics registers them
(plus the ledger gauges LedgerCollector serves, read from a real SQLite ledger), Flower's
as the installed flower package defines them. Renaming a metric breaks these tests.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from conveyor.worker.ledger import Ledger
from conveyor.worker.models import Base, Job, JobState
from conveyor.worker.observability import metrics
from conveyor.worker.observability.metrics import MULTIPROC_ENV, registry_for_scrape

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "ops" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "conveyor-dashboard.json"
README = ROOT / "ops" / "README.md"
RUNBOOK = ROOT / "ops" / "RUNBOOK.md"
COMPOSE_FILE = ROOT / "docker-compose.yml"

EXPECTED_ALERTS = {
    "ConveyorBacklogAgeHigh",
    "ConveyorDeadLettersGrowing",
    "ConveyorRetryStorm",
    "ConveyorNoConsumingWorkers",
    "ConveyorOutboxLagHigh",
    "ConveyorUnconsumedQueue",
    "ConveyorMetricsTargetDown",
}
# Served by each worker (1 while its consumer consumes), and by the relay from the broker
# (test_foreign_producers.py scrapes it): not collected from a bare ledger here.
WORKER_GAUGES = {
    "conveyor_worker_consuming": {"worker"},
    "conveyor_broker_queue_unconsumed_messages": {"queue"},
}
# Series Prometheus makes itself, and the labels it attaches to every scraped series.
PROMETHEUS_SERIES = {"up"}
TARGET_LABELS = {"job", "instance"}
# The signals the dashboard must show, by the series that carry them.
DASHBOARD_MUST_SHOW = {
    "conveyor_jobs_enqueued_total",
    "conveyor_jobs_started_total",
    "conveyor_jobs_succeeded_total",
    "conveyor_jobs_retried_total",
    "conveyor_jobs_dead_lettered_total",
    "conveyor_job_run_seconds_bucket",
    "conveyor_queue_jobs",
    "conveyor_queue_oldest_job_age_seconds",
    "conveyor_outbox_lag_seconds",
    "conveyor_ledger_write_seconds_bucket",
    "conveyor_worker_consuming",
    "flower_worker_online",
    "flower_worker_number_of_currently_executing_tasks",
    "flower_task_runtime_seconds_bucket",
    "flower_task_prefetch_time_seconds",
}
# job name: (compose service, port, metrics path, bearer token; else Flower's basic auth)
SCRAPE_TARGETS = {
    "conveyor-worker": ("worker", 9808, "/metrics", True),
    "conveyor-relay": ("relay", 9809, "/metrics", True),
    "conveyor-api": ("api", 8000, "/metrics", True),
    "flower": ("flower", 5555, "/metrics", False),
}
# Grafana's own variables, and what stands in for them when promtool parses a query.
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


# --- promtool ----------------------------------------------------------------------------


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is not installed: scripts/test installs it "
            "(Debian package prometheus), or run `apt-get install prometheus`"
        )
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules(rules: Any = None) -> list[dict[str, Any]]:
    document = load_yaml(ALERTS) if rules is None else rules
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


# --- PromQL: the metric selectors in an expression ---------------------------------------


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)


_TOKENS = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<matchers>\{(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^{}"'])*\})
    |(?P<range>\[[^\]]*\])
    |(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-zA-Z]*)
    |(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    |(?P<space>\s+)
    |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_MATCHER = re.compile(
    r"""\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
)
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _LABEL_LISTS | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


def selectors(expr: str) -> list[Selector]:
    """Every instant or range selector in ``expr``: function and aggregation names,
    keywords, label lists (``by (le)``), strings and durations are not metrics."""
    tokens = [
        (match.lastgroup or "", match.group())
        for match in _TOKENS.finditer(expr)
        if match.lastgroup != "space"
    ]
    found = []
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else ("", "")
        if kind == "ident" and text.lower() in _LABEL_LISTS and following[1] == "(":
            index = next(i for i in range(index, len(tokens)) if tokens[i][1] == ")")
        elif (
            kind == "ident"
            and following[1] != "("
            and following[1].lower() not in ("by", "without")  # sum by (...) (...)
            and text.lower() not in _KEYWORDS
        ):
            matchers = following[1] if following[0] == "matchers" else "{}"
            found.append(Selector(text, tuple(_MATCHER.findall(matchers))))
        elif kind == "matchers" and (index == 0 or tokens[index - 1][0] != "ident"):
            found.append(Selector("", tuple(_MATCHER.findall(text))))  # {__name__=...}
        index += 1
    return found


def test_selector_parser_finds_metrics_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, sum BY (le, queue) (rate(a_bucket{queue=~"$q", x="}"}'
        "[$__rate_interval] offset 5m))) / on () group_left sum without (task) (b) > bool 1"
        ' and absent(c) or label_replace(up, "dst", "$1", "src", "(.*)")'
    )
    assert selectors(expr) == [
        Selector("a_bucket", (("queue", "=~", '"$q"'), ("x", "=", '"}"'))),
        Selector("b", ()),
        Selector("c", ()),
        Selector("up", ()),
    ]
    assert selectors('{__name__="hidden"}') == [Selector("", (("__name__", "=", '"hidden"'),))]


# --- the metrics that exist --------------------------------------------------------------


def wire_names(name: str, kind: str) -> set[str]:
    """The series names a metric family exposes (counters get `_total` on the wire)."""
    if kind == "counter":
        base = name.removesuffix("_total")
        return {f"{base}_total", f"{base}_created"}
    if kind == "histogram":
        return {f"{name}_{suffix}" for suffix in ("bucket", "sum", "count", "created")}
    if kind == "summary":
        return {name, *(f"{name}_{suffix}" for suffix in ("sum", "count", "created"))}
    return {name}


@pytest.fixture(scope="module")
def conveyor_metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Conveyor's series names and their labels, as a /metrics endpoint serves them.

    The ledger gauges are collected from a real SQLite ledger holding one queued job, so
    their labels show; counters and histograms are read from the metrics module's collectors.
    """
    labels: dict[str, set[str]] = {}
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            # prometheus_client has no public accessor for a collector's labels.
            names = set(collector._labelnames)
            for family in collector.describe():
                for series in wire_names(family.name, family.type):
                    labels[series] = names | ({"le"} if series.endswith("_bucket") else set())

    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}")
    Base.metadata.create_all(ledger.engine)
    with ledger.transaction() as session:
        session.add(
            Job(id="j1", task="t", queue="q", state=JobState.QUEUED, max_attempts=1, payload={})
        )
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(MULTIPROC_ENV, raising=False)
        families = list(registry_for_scrape(ledger).collect())
    ledger.dispose()
    for family in families:
        if family.name.startswith("conveyor_"):
            for series in wire_names(family.name, family.type):
                labels.setdefault(series, set())
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)

    for name, names in WORKER_GAUGES.items():
        labels.setdefault(name, set()).update(names)
    # What the alerts and the dashboard rely on; a rename here must fail loudly.
    assert labels.get("conveyor_queue_jobs") == {"queue", "state"}, labels
    assert labels.get("conveyor_jobs_dead_lettered_total") == {"task", "queue", "reason"}
    return labels


def flower_source_metrics() -> set[str]:
    """Series names the installed flower package defines (prometheus_client constructors
    called with a literal name, whatever the class is imported as)."""
    spec = importlib.util.find_spec("flower")
    assert spec is not None, "flower is not installed"
    assert spec.submodule_search_locations, "flower is not a package"
    names: set[str] = set()
    for location in spec.submodule_search_locations:
        for path in Path(location).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            kinds = {
                alias.asname or alias.name: alias.name.lower()
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("prometheus_client")
                for alias in node.names
                if alias.name in ("Counter", "Gauge", "Histogram", "Summary")
            }
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in kinds
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    names |= wire_names(node.args[0].value, kinds[node.func.id])
    return names


@pytest.fixture(scope="module")
def flower_metrics() -> set[str]:
    names = flower_source_metrics()
    assert {"flower_events_total", "flower_worker_online"} <= names, names
    return names


@pytest.fixture(scope="module")
def known_series(conveyor_metrics: dict[str, set[str]], flower_metrics: set[str]) -> set[str]:
    return set(conveyor_metrics) | flower_metrics | PROMETHEUS_SERIES


def unknown_metrics(
    expr: str, known: set[str], conveyor_labels: dict[str, set[str]]
) -> Iterator[str]:
    """What in ``expr`` names a metric, or a Conveyor label, that does not exist."""
    found = selectors(expr)
    if not found:
        yield "no metric at all"
    for selector in found:
        if selector.metric not in known:
            yield f"unknown metric {selector.metric or '(unnamed selector)'!r}"
        elif selector.metric in conveyor_labels:
            allowed = conveyor_labels[selector.metric] | TARGET_LABELS
            for label, _operator, _value in selector.matchers:
                if label not in allowed:
                    yield f"{selector.metric} has no label {label!r}"


# --- alert rules -------------------------------------------------------------------------


def test_promtool_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout, result.stdout


def test_every_alert_is_there_and_actionable() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    assert len(rules) == len(EXPECTED_ALERTS), "an alert name is used twice"
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no `for:`"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        for key in ("summary", "description"):
            assert len(annotations.get(key, "")) > 20, f"{name}: {key} is missing or bare"
        assert annotations["runbook_url"] == f"ops/RUNBOOK.md#{name.lower()}", name
    severities = {rule["alert"]: rule["labels"]["severity"] for rule in rules}
    assert severities["ConveyorNoConsumingWorkers"] == "critical"
    assert severities["ConveyorBacklogAgeHigh"] == "critical"


def test_alert_expressions_use_only_existing_metrics(
    known_series: set[str], conveyor_metrics: dict[str, set[str]]
) -> None:
    problems = [
        f"{rule['alert']}: {problem}"
        for rule in alert_rules()
        for problem in unknown_metrics(rule["expr"], known_series, conveyor_metrics)
    ]
    assert problems == []


def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout
    assert "FAILED" not in result.stdout + result.stderr


def test_alert_unit_tests_show_each_alert_firing_and_silent() -> None:
    tests = load_yaml(ALERTS_TEST)
    assert tests["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    assert fires == EXPECTED_ALERTS, f"never shown firing: {EXPECTED_ALERTS - fires}"
    assert silent == EXPECTED_ALERTS, f"never shown silent: {EXPECTED_ALERTS - silent}"


def run_alert_tests_with(tmp_path: Path, alert: str, change: dict[str, Any]) -> str:
    """promtool's unit-test output against a copy of the rules with one rule changed."""
    rules = load_yaml(ALERTS)
    [rule] = [rule for rule in alert_rules(rules) if rule["alert"] == alert]
    rule.update(change)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0, f"{alert} changed by {change}, yet its tests still pass"
    return result.stdout + result.stderr


@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS))
def test_alert_unit_tests_catch_a_broken_rule(alert: str, tmp_path: Path) -> None:
    # A rule that never fires must fail a "fires" case ...
    never = run_alert_tests_with(tmp_path, alert, {"expr": "vector(1) < 0"})
    assert f"alertname: {alert}" in never, never
    # ... and one that fires at once, a "not yet" case.
    at_once = run_alert_tests_with(tmp_path, alert, {"for": "0s"})
    assert f"alertname: {alert}" in at_once, at_once


# --- runbook -----------------------------------------------------------------------------


def github_anchors(markdown: str) -> dict[str, str]:
    """Heading anchors as GitHub renders them (outside code fences): anchor -> heading."""
    anchors = {}
    in_fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (heading := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            text = heading.group(1)
            anchors[re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")] = text
    return anchors


def test_every_runbook_link_reaches_its_section_of_the_runbook() -> None:
    anchors = github_anchors(RUNBOOK.read_text())
    assert "alerts" in anchors, "ops/RUNBOOK.md has no Alerts section"
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        url = rule["annotations"].get("runbook_url")
        assert url, f"{rule['alert']} has no runbook_url"
        path, _, anchor = url.partition("#")
        assert (ROOT / path).resolve() == RUNBOOK.resolve(), url
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in {path}"
        assert anchors[anchor] == rule["alert"], anchors[anchor]
    # The alerts' old home says where they went.
    assert "RUNBOOK.md" in README.read_text(), "ops/README.md does not point to RUNBOOK.md"


# --- scrape config -----------------------------------------------------------------------


def test_promtool_accepts_the_scrape_config(tmp_path: Path) -> None:
    # Checked as deployed: next to alerts.yml and the token file an operator creates.
    for path in (SCRAPE_CONFIG, ALERTS):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "metrics_token").write_text("a-token\n")
    (tmp_path / "flower_password").write_text("a-password\n")
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS: prometheus.yml is valid prometheus config file syntax" in output, output
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in output, output

    (tmp_path / "metrics_token").unlink()
    missing = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert missing.returncode != 0
    assert "metrics_token" in missing.stdout + missing.stderr


def test_scrape_config_reaches_every_metrics_endpoint_of_the_stack() -> None:
    config = load_yaml(SCRAPE_CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(SCRAPE_TARGETS)
    services = set(load_yaml(COMPOSE_FILE)["services"])
    for name, (service, port, path, needs_token) in SCRAPE_TARGETS.items():
        job = jobs[name]
        assert service in services, f"{name}: no compose service {service!r}"
        addresses = {
            f"{entry}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for entry in sd["names"]
        } | {target for static in job.get("static_configs", []) for target in static["targets"]}
        assert addresses == {f"{service}:{port}"}, f"{name}: {addresses}"
        assert job.get("metrics_path", "/metrics") == path, name
        if needs_token:
            assert job["authorization"]["credentials_file"] == "metrics_token", name
            assert job["authorization"].get("type", "Bearer") == "Bearer", name
        else:
            assert job["basic_auth"]["password_file"] == "flower_password", name


def test_target_down_alert_watches_every_scrape_job() -> None:
    [rule] = [rule for rule in alert_rules() if rule["alert"] == "ConveyorMetricsTargetDown"]
    [up] = [selector for selector in selectors(rule["expr"]) if selector.metric == "up"]
    [(operator, pattern)] = [(op, value) for label, op, value in up.matchers if label == "job"]
    assert operator == "=~"
    for job in load_yaml(SCRAPE_CONFIG)["scrape_configs"]:
        assert re.fullmatch(pattern.strip("\"'"), job["job_name"]), job["job_name"]


# --- dashboard ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expression) of every query in the dashboard."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_dashboard_has_its_variables_and_layout(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"]
    assert dashboard["title"]
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    queue = variables["queue"]
    assert queue["type"] == "query"
    assert queue["includeAll"]
    assert queue["allValue"] == ".*"
    assert queue["datasource"]["uid"] == "${datasource}"
    assert queue["definition"] == "label_values(conveyor_queue_jobs, queue)"

    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: set[tuple[int, int]] = set()
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], f"{panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_queries_use_only_existing_metrics(
    dashboard: dict[str, Any], known_series: set[str], conveyor_metrics: dict[str, set[str]]
) -> None:
    used = set()
    problems = []
    for title, expr in queries(dashboard):
        problems += [f"{title}: {p}" for p in unknown_metrics(expr, known_series, conveyor_metrics)]
        used |= {selector.metric for selector in selectors(expr)}
    assert problems == []
    assert used >= DASHBOARD_MUST_SHOW, f"not shown: {sorted(DASHBOARD_MUST_SHOW - used)}"
    quantiles = {
        match
        for _title, expr in queries(dashboard)
        if "conveyor_job_run_seconds_bucket" in expr
        for match in re.findall(r"histogram_quantile\(\s*([\d.]+)", expr)
    }
    assert quantiles == {"0.5", "0.95", "0.99"}


def test_dashboard_filters_queue_metrics_by_the_queue_variable(
    dashboard: dict[str, Any], conveyor_metrics: dict[str, set[str]]
) -> None:
    for title, expr in queries(dashboard):
        for selector in selectors(expr):
            if "queue" in conveyor_metrics.get(selector.metric, set()):
                assert ("queue", "=~", '"$queue"') in selector.matchers, f"{title}: {expr}"


def test_dashboard_queries_are_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    defined = {var["name"] for var in dashboard["templating"]["list"]}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in defined or name in GRAFANA_VARIABLES, f"undefined variable ${name}"
        return GRAFANA_VARIABLES.get(name, ".*")

    rules = [
        {
            "record": f"dashboard:query_{index}",
            "expr": re.sub(r"\$\{(\w+)\}|\$(\w+)", substitute, expr),
        }
        for index, (_title, expr) in enumerate(queries(dashboard))
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout
