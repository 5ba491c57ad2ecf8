"""A real browser on a real ``streamlit run``: for bench/ui.py and the end-to-end UI test.

Debian's Chromium and ChromeDriver (``scripts/browser.sh`` installs them), driven by Selenium;
nothing downloads a browser. The server is a subprocess on 127.0.0.1 and a free port, stopped
with terminate → wait (kill after a grace period).
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from clinic.cli.ui_command import streamlit_command

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def streamlit_server(env: Mapping[str, str], timeout_s: float = 90.0) -> Iterator[str]:
    """Start the UI on a free port; yield its base URL; stop it (terminate, then kill)."""
    port = free_port()
    command = streamlit_command("127.0.0.1", port)  # exactly what `clinic ui` runs
    process = subprocess.Popen(
        command, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, timeout_s)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise RuntimeError(f"streamlit exited with {process.returncode}:\n{output[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not become healthy at {url} within {timeout_s} s")


@contextmanager
def chromium(width: int = 1600, height: int = 1400) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, css: str, timeout_s: float = 60.0) -> WebElement:
    element: WebElement = WebDriverWait(driver, timeout_s).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )
    return element


def wait_clickable(driver: WebDriver, css: str, timeout_s: float = 60.0) -> WebElement:
    element: WebElement = WebDriverWait(driver, timeout_s).until(
        expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, css))
    )
    return element


def sign_in(driver: WebDriver, url: str, username: str, password: str) -> None:
    driver.get(url)
    wait_for(driver, ".st-key-login_username input").send_keys(username)
    driver.find_element(By.CSS_SELECTOR, ".st-key-login_password input").send_keys(password)
    wait_clickable(driver, ".st-key-login_submit button").click()


def worklist_case_ids(driver: WebDriver, timeout_s: float = 60.0) -> list[str]:
    """Case ids of the worklist's open buttons, top (highest risk) first."""
    wait_for(driver, "[class*='st-key-open_'] button", timeout_s)
    ids = []
    for element in driver.find_elements(By.CSS_SELECTOR, "[class*='st-key-open_']"):
        for name in (element.get_attribute("class") or "").split():
            if name.startswith("st-key-open_"):
                ids.append(name.removeprefix("st-key-open_"))
    return ids


def open_case(driver: WebDriver, case_id: str, timeout_s: float = 60.0) -> float:
    """Click the case in the worklist; seconds until its review form (the page's end) is drawn."""
    started = time.perf_counter()
    wait_clickable(driver, f".st-key-open_{case_id} button").click()
    wait_for(driver, ".st-key-review_submit button", timeout_s)
    _wait_still(driver)
    return time.perf_counter() - started


def _wait_still(driver: WebDriver, timeout_s: float = 60.0) -> None:
    """Until the script run has finished and nothing on the page is still a loading skeleton."""
    idle = "[data-testid='stApp'][data-test-script-state='notRunning']"
    WebDriverWait(driver, timeout_s).until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, idle)
            and not d.find_elements(By.CSS_SELECTOR, "[data-testid='stSkeleton']")
        )
    )
