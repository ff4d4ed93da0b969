"""The live page in headless Chromium: it shows a new event after an emit, the check's lines, and
kills an agent with the operator's token."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from eventstore import AgentClient, Projector
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated, stream_for
from tests.fix_api import Api
from tests.fix_projector import scalar

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage")


@pytest.fixture
def browser() -> Iterator[object]:
    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_page_shows_events_and_kills_an_agent(api: Api, settings: Settings, projector: Projector,
                                              browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    driver: WebDriver = browser  # type: ignore[assignment]
    wait = WebDriverWait(driver, 30)
    with AgentClient("page-agent", settings) as agent:
        assert agent.emit_and_wait(InventoryUpdated(sku="W1", quantity=1), stream_for("W1")).ok
        driver.get(api.url + "/")
        driver.find_element(By.ID, "token").send_keys(api.operator)
        driver.find_element(By.ID, "save-token").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-agent="page-agent"]'))
        # A new event appears after an emit.
        new = agent.emit_and_wait(InventoryAdjusted(sku="W1", delta=2), stream_for("W1"))
        assert new.ok
        row = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-event-id="{new.event_id}"]'))
        assert "InventoryAdjusted" in row[0].text and "page-agent" in row[0].text
        # The check's lines are shown.
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#check li")) == 10)
        assert "Shared resources mapped" in driver.find_element(By.ID, "check").text
        assert driver.find_elements(By.CSS_SELECTOR, "#chart-lag polyline")
        # Kill the agent from the page.
        reason = driver.find_element(By.ID, "kill-reason")
        reason.clear()
        reason.send_keys("killed in the browser test")
        driver.find_element(By.CSS_SELECTOR, 'tr[data-agent="page-agent"] button.kill').click()
        wait.until(lambda d: "killed" in d.find_element(By.CSS_SELECTOR, 'tr[data-agent="page-agent"]').text)
    db = settings.require_database()
    assert scalar(db, "SELECT status FROM agents WHERE agent_id = 'page-agent'") == "killed"
    assert "killed in the browser test" in scalar(db, "SELECT reason FROM agents WHERE agent_id = 'page-agent'")
    assert driver.execute_script("return sessionStorage.getItem('eventstore-token')") == api.operator
