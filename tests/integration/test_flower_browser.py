"""Flower's dashboard in a real browser: an operator logs in and sees the running worker.

A headless Chromium (Debian's `chromium` and `chromium-driver`) sends Flower's basic-auth
credentials on every request, as a browser does after its login prompt, loads the workers
page and waits for the page's own scripts to show the worker live, with the job it ran.
The screenshot is kept in `test-artifacts/` for people to look at.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conveyor.worker.client import enqueue
from conveyor.worker.models import JobState
from tests.conftest import ROOT, state_of, wait_for
from tests.integration.browser import chromium
from tests.integration.test_flower import PASSWORD, USER, FlowerStack, flower_stack

pytestmark = pytest.mark.integration

ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOT = "flower-workers.png"
PAGE_WAIT_S = 30


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[FlowerStack]:
    with flower_stack("redis", tmp_path_factory.mktemp("flower-browser"), pg_url) as started:
        yield started


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    yield from chromium()


def send_credentials(driver: webdriver.Chrome, user: str, password: str) -> None:
    """Send basic auth on every request from now on: page loads and their scripts' calls."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )


def worker_row(driver: webdriver.Chrome, worker: str, *, succeeded: str) -> list[str] | None:
    """The cells of ``worker``'s row, once the table shows it with ``succeeded`` jobs."""
    for row in driver.find_elements(By.CSS_SELECTOR, "#workers-table tbody tr"):
        cells = [str(cell.text) for cell in row.find_elements(By.TAG_NAME, "td")]
        # Columns: worker, status, active, processed, failed, succeeded, load average.
        # A long name wraps inside its cell: compare it without the line breaks.
        if cells and "".join(cells[0].split()) == worker and cells[5] == succeeded:
            return cells
    return None


def test_an_operator_sees_the_running_worker(stack: FlowerStack, browser: webdriver.Chrome) -> None:
    job_id = enqueue("test.count", {"counter": stack.queue}, queue=stack.queue, app=stack.app)
    wait_for(lambda: state_of(stack.app, job_id) == JobState.SUCCEEDED, timeout_s=60)

    browser.get(f"{stack.base_url}/workers")
    # Without credentials the browser gets a login prompt, not the dashboard.
    assert browser.find_elements(By.ID, "workers-table") == []
    assert stack.worker not in browser.page_source

    send_credentials(browser, USER, PASSWORD)
    browser.get(f"{stack.base_url}/workers")
    wait = WebDriverWait(browser, PAGE_WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    try:
        # The page's scripts refresh it from Flower's API, with the same credentials.
        online = wait.until(
            lambda driver: driver.find_element(By.ID, "workers-online").text.strip("— \n")
        )
        row = wait.until(lambda driver: worker_row(driver, stack.worker, succeeded="1"))
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / SCREENSHOT
        assert browser.save_screenshot(str(shot))
    assert int(online) >= 1
    assert row is not None
    assert row[1] == "Online", row
    assert shot.stat().st_size > 10_000
