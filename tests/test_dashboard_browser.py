"""The dashboard in a real browser: Debian's headless Chromium driven by
Selenium through Debian's chromedriver. Log in, see the node count, open
every page without a JavaScript console error, submit a job from the Jobs
page and watch it turn SUCCEEDED without reloading, see a running task in
the task stream; save a screenshot of the overview to
docs/dashboard-overview.png. Skipped without a browser, except under CI=true
where that fails."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import pytest

import zray
from zray._private.node import free_port
from zray.worker import global_state

from conftest import assert_nothing_left
from test_dashboard_helpers import start_local

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "docs", "dashboard-overview.png")
PAGES = ["/", "/nodes", "/tasks", "/actors", "/placement-groups", "/jobs", "/logs",
         "/memory", "/logs/view?filename=gcs.log"]


def _need_browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        message = f"no browser to test with: missing {missing} (apt-get install chromium " \
                  f"chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def browser():
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="zray-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def dash():
    if zray.is_initialized():
        zray.shutdown()
    d = start_local(dashboard_port=free_port())
    session_dir = global_state.worker.session_dir
    yield d
    zray.shutdown()
    assert_nothing_left(session_dir)


def _until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:          # noqa: BLE001 — an element not there yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout}s")
        time.sleep(0.2)


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@zray.remote
def slow_square(x):
    time.sleep(8)
    return x * x


def test_dashboard_in_a_real_browser(browser, dash, tmp_path):
    from selenium.webdriver.common.by import By
    text = lambda css: browser.find_element(By.CSS_SELECTOR, css).text  # noqa: E731

    # pages need the login first
    browser.get(dash.url + "/")
    assert "/login" in browser.current_url
    browser.find_element(By.ID, "token").send_keys(dash.token)
    browser.find_element(By.ID, "login-button").click()
    _until(lambda: text("#node-count") == "1", 20, "the node count shows 1")
    assert _console_errors(browser) == []

    for path in PAGES:
        browser.get(dash.url + path)
        _until(lambda: browser.execute_script("return document.readyState") == "complete",
               20, f"{path} loads")
        assert browser.find_element(By.TAG_NAME, "h1").text, path
        time.sleep(0.5)         # let its script run and its live stream start
        assert _console_errors(browser) == [], path

    # submit a job from the Jobs page; its row turns SUCCEEDED without a reload
    browser.get(dash.url + "/jobs")
    browser.find_element(By.ID, "entrypoint").send_keys(
        f"{sys.executable} -c \"import time; time.sleep(1); print('browser job')\"")
    browser.find_element(By.ID, "submit-button").click()
    submitted = _until(lambda: text("#submit-result").startswith("Submitted")
                       and text("#submit-result"), 20, "the job is accepted")
    sid = submitted.split()[-1]
    marker = browser.execute_script("window.__noReload = 1; return window.__noReload")
    row = f'#jobs tr[data-id="{sid}"] .status'
    _until(lambda: text(row) == "SUCCEEDED", 60, "the job's row turns SUCCEEDED")
    assert browser.execute_script("return window.__noReload") == marker   # same page
    assert _console_errors(browser) == []

    # a running task appears in the task stream
    browser.get(dash.url + "/tasks")
    refs = [slow_square.remote(i) for i in range(2)]
    _until(lambda: browser.find_elements(By.CSS_SELECTOR, "#task-stream rect.running"), 30,
           "a running task appears in the task stream")
    assert "slow_square" in text("#stream-legend")
    assert _console_errors(browser) == []

    # the overview, with its charts, for the README
    browser.get(dash.url + "/")
    _until(lambda: browser.find_elements(By.CSS_SELECTOR, "#chart-cpu path"), 30,
           "the CPU chart draws")
    assert zray.get(refs) == [0, 1]
    # the README's picture is rewritten only when asked (ZRAY_UPDATE_SCREENSHOT=1):
    # a test run must not change tracked files
    shot = SCREENSHOT if os.environ.get("ZRAY_UPDATE_SCREENSHOT") == "1" \
        else str(tmp_path / "overview.png")
    os.makedirs(os.path.dirname(shot), exist_ok=True)
    assert browser.save_screenshot(shot)
    assert os.path.getsize(shot) > 10_000
