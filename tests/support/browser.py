"""Headless Chromium for tests: Debian's chromium + chromedriver, driven by selenium.

Why these flags: ``--no-sandbox`` (root in containers), ``--disable-gpu`` (no GPU;
WebGL falls back to SwiftShader, which h5web's canvas draws with), no background
networking or component updates (no traffic off this machine), a fresh profile per
browser so no state leaks between tests.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
T = TypeVar("T")


def require_chromium() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(
            f"browser tests need Debian's chromium and chromium-driver (missing {missing}): apt-get install -y chromium chromium-driver"
        )
    pytest.importorskip("selenium", reason="browser tests need selenium (pip install selenium)")


@contextmanager
def chromium(profile: Path, width: int = 1500, height: int = 1150, extra_flags: Sequence[str] = ()) -> Iterator[Any]:
    """A headless Chromium (selenium WebDriver) with a fresh profile; quits on exit.
    ``extra_flags``: more command-line switches (``--host-resolver-rules`` to map a name)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-dev-shm-usage",
        "--enable-unsafe-swiftshader",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        *extra_flags,
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=subprocess.DEVNULL)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_entries(driver: Any) -> list[dict[str, Any]]:
    """Console messages since the last call (chromedriver hands each out once)."""
    return list(driver.get_log("browser"))


def severe(entries: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in entries if e.get("level") == "SEVERE"]


def wait_until(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def page_state(driver: Any, expression: str) -> Any:
    """Evaluate a JavaScript expression against ``window.__streamtomo``."""
    return driver.execute_script(f"const s = window.__streamtomo; return s ? ({expression}) : null;")


def page_floats(driver: Any, method: str) -> np.ndarray | None:
    """A float32 array the page fetched (``sliceBase64``/``sinogramBase64``)."""
    text = page_state(driver, f"s.{method}()")
    return None if text is None else np.frombuffer(base64.b64decode(text), dtype="<f4")


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def element_png(driver: Any, css: str) -> bytes:
    """The pixels of one element, as PNG bytes (what is on screen, composited)."""
    from selenium.webdriver.common.by import By

    png: bytes = driver.find_element(By.CSS_SELECTOR, css).screenshot_as_png
    return png
