"""The console in a real headless Chromium, over a real API, worker and relay.

An operator signs in, checks the overview against the ledger, filters jobs by task, state
and a payload field, opens a dead job to read its attempts and traceback, previews and
then bulk-replays the dead letters of a filter, and watches the replayed jobs succeed; a
viewer sees no payload and is refused a replay; signing out ends the session. axe-core
checks every page the operator opens (no violation of critical or serious impact), and a
screenshot of each is kept in ``test-artifacts/console/``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conveyor.worker.app import ConveyorApp
from conveyor.worker.client import JobRequest, enqueue_many
from tests.conftest import (
    REDIS_URL,
    ROOT,
    Processes,
    create_ledger,
    delete_queues,
    drop_database,
    npm_package,
    producer_app,
    wait_for,
)
from tests.integration.browser import chromium
from tests.integration.test_api_harness import Api, api_env, create_key, start_api

pytestmark = pytest.mark.integration

AXE = "axe-core@4.10"
ARTIFACTS = ROOT / "test-artifacts" / "console"
WAIT_S = 60
DEAD_JOBS = 3
GOOD_JOBS = 4


@dataclass
class Stack:
    api: Api
    app: ConveyorApp
    ledger_url: str
    queue: str
    gate: str
    admin: str
    reader: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A ledger of its own; API, worker and relay on it; dead and succeeded jobs."""
    tmp = tmp_path_factory.mktemp("console-browser")
    ledger_url = create_ledger("conveyor_console_ui")
    queue, gate = f"console-ui-{uuid.uuid4().hex[:8]}", f"gate-{uuid.uuid4().hex[:8]}"
    env = api_env(ledger_url, REDIS_URL, tmp)
    processes = Processes(tmp)
    app = producer_app(REDIS_URL, ledger_url, tmp)
    try:
        processes.start(env, "worker", "-Q", queue, "-c", "2", "--loglevel", "INFO")
        processes.start(env, "relay")
        api = start_api(processes, env)
        dead = [("test.gated", {"gate": gate, "customer_id": 42 + n}) for n in range(DEAD_JOBS)]
        good = [("test.count", {"counter": gate, "customer_id": 7}) for _ in range(GOOD_JOBS)]
        requests = [JobRequest(task, payload, queue=queue) for task, payload in dead + good]
        results = enqueue_many(requests, app=app)
        assert all(r.error is None for r in results)
        wait_for(lambda: states(ledger_url, queue) == {"dead": DEAD_JOBS, "succeeded": GOOD_JOBS})
        yield Stack(
            api, app, ledger_url, queue, gate, create_key(env, "admin"), create_key(env, "read")
        )
    finally:
        processes.stop_all()
        app.ledger.dispose()
        app.close()
        delete_queues(REDIS_URL, [queue])
        drop_database(ledger_url)


def states(ledger_url: str, queue: str) -> dict[str, int]:
    with psycopg.connect(ledger_url) as connection:
        rows = connection.execute(
            "SELECT state, count(*) FROM conveyor_jobs WHERE queue = %s GROUP BY state", (queue,)
        ).fetchall()
    return {state: count for state, count in rows}


def scalar(ledger_url: str, sql: str, *params: Any) -> Any:
    with psycopg.connect(ledger_url) as connection:
        row = connection.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture(scope="module")
def axe_source() -> str:
    """axe-core's browser build, installed with npm into .cache/node once."""
    return (npm_package(AXE) / "axe.min.js").read_text()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    yield from chromium(height=1000)


def waiting(driver: webdriver.Chrome) -> WebDriverWait[webdriver.Chrome]:
    return WebDriverWait(driver, WAIT_S, ignored_exceptions=[StaleElementReferenceException])


def check_page(driver: webdriver.Chrome, axe: str, name: str) -> None:
    """Keep a screenshot of the page, and fail on axe-core violations that matter."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    driver.execute_script(axe)
    found = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document).then(r => done({passes: r.passes.length, violations: r.violations.map("
        "  v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))}))}));"
    )
    assert found["passes"] > 10, found  # axe did check the page
    serious = [v for v in found["violations"] if v["impact"] in ("critical", "serious")]
    assert serious == [], f"{name}: {json.dumps(serious, indent=1)}"


def sign_in(driver: webdriver.Chrome, base_url: str, token: str) -> None:
    driver.get(f"{base_url}/console/")
    assert "/console/login" in driver.current_url  # no session: the sign-in page
    driver.find_element(By.ID, "api_key").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    waiting(driver).until(lambda d: d.find_elements(By.ID, "total-succeeded"))


def test_an_operator_triages_dead_letters_in_the_browser(
    stack: Stack, browser: webdriver.Chrome, axe_source: str
) -> None:
    base = stack.api.base_url
    browser.get(f"{base}/console/login")
    check_page(browser, axe_source, "login")
    sign_in(browser, base, stack.admin)

    # The overview shows what the ledger has (this ledger holds only this test's jobs).
    retried = scalar(
        stack.ledger_url, "SELECT count(*) FROM conveyor_job_attempts WHERE outcome = 'scheduled'"
    )
    shown = {
        name: browser.find_element(By.ID, f"total-{name}").text
        for name in ("succeeded", "retried", "dead")
    }
    assert shown == {"succeeded": str(GOOD_JOBS), "retried": str(retried), "dead": str(DEAD_JOBS)}
    assert retried == DEAD_JOBS  # each dead job was retried once, then died
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-queue="{stack.queue}"]')
    assert "1" in row.find_elements(By.TAG_NAME, "td")[6].text  # one worker consumes it
    check_page(browser, axe_source, "overview")

    browser.get(f"{base}/console/queues")
    check_page(browser, axe_source, "queues")

    # Jobs of a task, by state and a payload field: the form's fields end up in the URL.
    browser.get(f"{base}/console/jobs")
    browser.find_element(By.NAME, "task").send_keys("test.gated")
    browser.find_element(By.CSS_SELECTOR, "select[name=state] option[value=dead]").click()
    browser.find_element(By.NAME, "payload").send_keys("customer_id = 43")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    waiting(browser).until(lambda d: "customer_id" in d.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "table.jobs tbody tr a")
    expected = scalar(
        stack.ledger_url,
        "SELECT id FROM conveyor_jobs WHERE task = 'test.gated' AND payload @> %s::jsonb",
        json.dumps({"customer_id": 43}),
    )
    assert [link.text for link in rows] == [expected]
    assert "state=dead" in browser.current_url
    check_page(browser, axe_source, "jobs")

    # One dead job: both attempts, on a named worker, with the traceback.
    rows[0].click()
    waiting(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "ol.timeline li"))
    attempts = browser.find_elements(By.CSS_SELECTOR, "ol.timeline li")
    assert [a.find_element(By.TAG_NAME, "h3").text for a in attempts] == [
        "Attempt 1: failed, retried",
        "Attempt 2: failed, dead-lettered",
    ]
    assert "builtins.RuntimeError" in attempts[1].text
    assert "Why retried" in attempts[0].text
    browser.find_elements(By.CSS_SELECTOR, "details summary")[-1].click()
    traceback = browser.find_elements(By.CSS_SELECTOR, "pre.traceback")[-1].text
    assert "Traceback (most recent call last)" in traceback
    assert f"gate {stack.gate} is closed" in traceback
    assert '"customer_id": 43' in browser.find_element(By.ID, "payload").text
    check_page(browser, axe_source, "job")

    # The dead letters of the task: grouped, previewed, then replayed with the gate open.
    browser.get(f"{base}/console/dead-letters?task=test.gated")
    group = browser.find_element(By.CSS_SELECTOR, "table.groups tbody tr")
    assert group.find_elements(By.TAG_NAME, "td")[2].text == str(DEAD_JOBS)
    check_page(browser, axe_source, "dead-letters")
    browser.find_element(By.LINK_TEXT, "Preview replay").click()
    preview = waiting(browser).until(lambda d: d.find_element(By.ID, "preview-count"))
    assert preview.text.startswith(f"{DEAD_JOBS} dead letters match")
    assert len(browser.find_elements(By.CSS_SELECTOR, "ul.ids li")) == DEAD_JOBS
    assert states(stack.ledger_url, stack.queue)["dead"] == DEAD_JOBS  # a preview does nothing
    check_page(browser, axe_source, "preview")
    with psycopg.connect(stack.ledger_url) as connection:
        connection.execute(
            "INSERT INTO conveyor_test_counters (name, value) VALUES (%s, 1)", (stack.gate,)
        )
    browser.find_element(By.CSS_SELECTOR, "form.stack button[type=submit]").click()

    # The replay's page follows the new jobs until all of them succeeded.
    waiting(browser).until(lambda d: "/console/audit/" in d.current_url)
    waiting(browser).until(
        lambda d: d.find_element(By.ID, "replay-finished").text == str(DEAD_JOBS)
    )
    assert browser.find_element(By.CSS_SELECTOR, '[data-state="succeeded"]').text == str(DEAD_JOBS)
    replayed = states(stack.ledger_url, stack.queue)
    assert replayed == {"dead": DEAD_JOBS, "succeeded": GOOD_JOBS + DEAD_JOBS}
    check_page(browser, axe_source, "replay-progress")
    browser.get(f"{base}/console/audit")
    actions = [
        cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "table.audit td:nth-child(3)")
    ]
    assert actions[:2] == ["replay", "login"]
    check_page(browser, axe_source, "audit")
    browser.get(f"{base}/console/keys")
    check_page(browser, axe_source, "keys")

    # Signing out ends the session: the console asks to sign in again.
    browser.find_element(By.CSS_SELECTOR, "form.who button").click()
    waiting(browser).until(lambda d: "/console/login" in d.current_url)
    browser.get(f"{base}/console/jobs")
    assert "/console/login" in browser.current_url
    assert browser.find_elements(By.ID, "api_key")


def test_a_viewer_sees_no_payload_and_is_refused_a_replay(
    stack: Stack, browser: webdriver.Chrome
) -> None:
    base = stack.api.base_url
    sign_in(browser, base, stack.reader)
    dead_id = scalar(
        stack.ledger_url,
        "SELECT id FROM conveyor_jobs WHERE queue = %s AND state = 'dead' LIMIT 1",
        stack.queue,
    )
    browser.get(f"{base}/console/jobs/{dead_id}")
    assert browser.find_element(By.ID, "payload-hidden").text == "Payloads are hidden for viewers."
    assert "customer_id" not in browser.page_source
    assert "Traceback (most recent call last)" not in browser.page_source
    assert browser.find_elements(By.CSS_SELECTOR, "ol.timeline li")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "job-as-viewer.png"))

    browser.get(f"{base}/console/dead-letters?task=test.gated")
    assert browser.find_elements(By.LINK_TEXT, "Preview replay") == []
    browser.get(f"{base}/console/dead-letters/preview?action=replay&task=test.gated")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not allowed"
    # The form is not offered; posting it anyway, with the session's own CSRF token, is a 403.
    replays = "SELECT count(*) FROM conveyor_jobs WHERE queue = %s AND replay_of IS NOT NULL"
    before = scalar(stack.ledger_url, replays, stack.queue)
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const body = new URLSearchParams({csrf_token: document.querySelector("
        "  'input[name=csrf_token]').value, expected: '10', task: 'test.gated'});"
        "fetch('/console/dead-letters/replay', {method: 'POST', body}).then(r => done(r.status));"
    )
    assert status == 403
    assert scalar(stack.ledger_url, replays, stack.queue) == before
