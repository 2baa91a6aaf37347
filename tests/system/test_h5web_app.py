"""The h5web snippet of ``streamtomo/app/viewer/README.md``, built with the real npm
``@h5web/app`` (``tests/system/h5web_app``), opened in a real headless Chromium from
an origin of its own against a live domain: the tree shows ``/entry`` and its
children, with no JavaScript error. Its build type-checks the snippet's props against
the package's own types (``fetcher`` became required in @h5web/app 17).
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamtomo.app.local_hsds import LocalHsds
from streamtomo.hsds_bridge.rest_server import HdfRestServer
from tests.support import browser
from tests.support.publisher_contract import make_scan_domain

pytestmark = pytest.mark.slow

PAGE = Path(__file__).with_name("h5web_app")
SOURCES = [PAGE / name for name in ("package-lock.json", "index.html", "vite.config.ts", "src/main.tsx")]
README = Path(__file__).resolve().parents[2] / "streamtomo" / "app" / "viewer" / "README.md"
DOMAIN = "/home/streamtomo/h5web.h5"


@pytest.fixture(scope="module")
def page_dir() -> Path:
    """``dist/`` of the page, (re)built from the locked packages when a source is newer."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("the h5web page needs Node.js 20.19+ (or 22.12+) and npm")
    built = PAGE / "dist" / "index.html"
    if not (PAGE / "node_modules" / "@h5web" / "app").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=PAGE, check=True, timeout=600)
    if not built.exists() or any(src.stat().st_mtime > built.stat().st_mtime for src in SOURCES):
        subprocess.run([npm, "run", "build"], cwd=PAGE, check=True, timeout=600)
    return built.parent


@pytest.fixture(scope="module")
def page_url(page_dir: Path) -> Iterator[str]:
    """The built page on 127.0.0.1, on a port (an origin) of its own."""
    handler = functools.partial(_QuietHandler, directory=str(page_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _open(driver: Any, page: str, endpoint: str, domain: str = DOMAIN, **account: str) -> None:
    query = urllib.parse.urlencode({"url": endpoint, "domain": domain, **account})
    driver.get(f"{page}/index.html?{query}")


def _tree(driver: Any) -> list[str]:
    """Entity names in h5web's explorer (its tree items are role=treeitem buttons;
    an NeXus group carries an 'NX' badge after its name)."""
    names: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('[role=treeitem]')].map(e => e.textContent.trim());"
    )
    return [name.removesuffix("NX").strip() for name in names]


def _click_tree_item(driver: Any, name: str) -> None:
    driver.execute_script(
        "const items = [...document.querySelectorAll('[role=treeitem]')];"
        "items.find(e => e.textContent.trim().replace(/NX$/, '').trim() === arguments[0]).click();",
        name,
    )


def test_readme_snippet_is_the_page(page_dir: Path) -> None:
    # The README shows what the page runs: a fetcher, no username/password props.
    text = README.read_text()
    snippet = re.search(r"\*\*h5web\*\*.*?```tsx\n(.*?)```", text, re.S)
    assert snippet is not None
    code = snippet.group(1)
    main = (PAGE / "src" / "main.tsx").read_text()
    for needed in ("createBasicFetcher", "fetcher={fetcher}", "<HsdsProvider", "filepath=", "<App"):
        assert needed in code and needed in main, needed
    assert "username=" not in code and "password=" not in code
    assert "@h5web/app/styles.css" in code and "@h5web/app/styles.css" in main


def _shows_entry(driver: Any) -> None:
    tree = browser.wait_until(lambda: (names := _tree(driver)) and "entry" in names and names, 60, "the /entry tree")
    assert tree[0] == DOMAIN.rsplit("/", 1)[1]  # the file, then its children
    # The NeXus default (/entry/data, an NXdata with a 3-D signal) is drawn; only then
    # is /entry opened (a click while the heatmap mounts races inside h5web).
    browser.wait_until(lambda: "NX Heatmap" in driver.find_element("css selector", "body").text, 60, "a heatmap")
    _click_tree_item(driver, "entry")
    browser.wait_until(
        lambda: {"data", "status", "valid", "detector"} <= set(_tree(driver)), 60, "the children of /entry"
    )
    assert driver.execute_script("return window.__errors") == []
    assert browser.severe(browser.console_entries(driver)) == []
    body = driver.find_element("css selector", "body").text
    assert "fetcher is not a function" not in body and "Error" not in body


def test_h5web_app_shows_the_live_domain(page_url: str, tmp_path: Path) -> None:
    browser.require_chromium()
    domain = make_scan_domain(DOMAIN)
    with HdfRestServer(cors_origins=[page_url]) as server:
        server.start(domain)
        with browser.chromium(tmp_path / "profile") as driver:
            _open(driver, page_url, server.url)
            _shows_entry(driver)


def test_h5web_app_reads_streamtomo_hsds_from_a_configured_origin(page_url: str, tmp_path: Path) -> None:
    # The README's HSDS variant: Basic auth through the fetcher, and the page's
    # origin given to `streamtomo hsds` (--cors-origin ends up here).
    browser.require_chromium()
    pytest.importorskip("hsds")
    from streamtomo.hsds_bridge.hsds_writer import HsdsWriter

    with LocalHsds(tmp_path / "hsds", cors_origins=[page_url]) as hsds:
        name = f"{hsds.writer_folder}h5web.h5"
        with HsdsWriter(hsds.url, name, hsds.accounts.writer) as writer:
            writer.start(make_scan_domain(name))
        viewer = hsds.accounts.viewer
        with browser.chromium(tmp_path / "profile") as driver:
            _open(driver, page_url, hsds.url, name, user=viewer.username, password=viewer.password)
            _shows_entry(driver)


def test_without_the_origin_allowed_the_page_reads_nothing(page_url: str, tmp_path: Path) -> None:
    # The check above is not vacuous: the same page from an origin the server does
    # not list cannot read the domain.
    browser.require_chromium()
    domain = make_scan_domain(DOMAIN)
    with HdfRestServer(cors_origins=["http://viewer.example"]) as server:
        server.start(domain)
        with browser.chromium(tmp_path / "profile") as driver:
            _open(driver, page_url, server.url)
            browser.wait_until(
                lambda: [e for e in browser.console_entries(driver) if "CORS" in e.get("message", "")],
                60,
                "the browser's CORS refusal",
            )
            assert "entry" not in _tree(driver)
