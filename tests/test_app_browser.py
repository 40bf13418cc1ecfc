"""End to end in a real browser: `facegallery app` serves a dlib gallery on 127.0.0.1, headless Chromium uploads a
five_celebrity validation photo, and the person's name must appear on the page. A screenshot is saved under the
test's tmp dir (``app_identify.png``)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_app import shared_dlib_gallery, val_photo

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.data]

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("FACEGALLERY_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FACEGALLERY_CHROMEDRIVER", "/usr/bin/chromedriver")
START_TIMEOUT_S = 180
PAGE_TIMEOUT_S = 180
PERSON = "madonna"


def _need_browser() -> None:
    pytest.importorskip("selenium")
    pytest.importorskip("streamlit")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).is_file() or shutil.which(path)):
            pytest.skip(f"{path} is not installed (Debian packages chromium and chromium-driver)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"facegallery app exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"facegallery app did not answer within {START_TIMEOUT_S} s:\n{log.read_text(errors='replace')}")


@pytest.fixture
def served_app(tmp_path_factory, five_celebrity, tmp_path):
    """`facegallery --gallery G app --port P` in a child process; yields the URL, stops the server afterwards."""
    _need_browser()
    home = shared_dlib_gallery(tmp_path_factory, five_celebrity)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGALLERY_")}
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from cli.main import main; main()", "--quiet", "--gallery", str(home), "app",
             "--port", str(port), "--new-token"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_healthy(proc, port, log)
        yield f"http://127.0.0.1:{port}", log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which(CHROMIUM) or CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1500"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which(CHROMEDRIVER) or CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _token(log: Path) -> str:
    marker = "Access token (shown once; stored hashed in the gallery): "
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith(marker)]
    assert len(lines) == 1, log.read_text(errors="replace")
    return lines[0][len(marker):].strip()


def _enter_token(browser, wait, token: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "input[type=password]"))
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(token, Keys.ENTER)


def test_upload_in_chromium_names_the_person(served_app, browser, five_celebrity, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, log = served_app
    assert f"127.0.0.1:{url.rsplit(':', 1)[1]}" in log.read_text(errors="replace")  # bound to loopback only
    browser.get(url)
    wait = WebDriverWait(browser, PAGE_TIMEOUT_S)
    # issue 14: the access token first; a wrong one shows nothing of the gallery
    _enter_token(browser, wait, "not-the-token")
    wait.until(lambda d: "Wrong access token." in d.find_element(By.TAG_NAME, "body").text)
    assert not browser.find_elements(By.CSS_SELECTOR, "input[type=file]")
    assert "5 people," not in browser.find_element(By.TAG_NAME, "body").text
    _enter_token(browser, wait, _token(log))
    file_input = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "input[type=file]"))
    assert "5 people," in browser.find_element(By.TAG_NAME, "body").text

    file_input.send_keys(str(val_photo(five_celebrity, PERSON)))
    wait.until(lambda d: "Face 1:" in d.find_element(By.TAG_NAME, "body").text)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=stImage] img"))
    time.sleep(1)  # let the image finish painting before the screenshot
    body = browser.find_element(By.TAG_NAME, "body").text
    assert f"Face 1: {PERSON} (dlib 0.9" in body
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "table td")]
    assert PERSON in cells
    shot = tmp_path / "app_identify.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
