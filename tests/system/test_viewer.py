"""The live viewer: its proxy (fast), silx opening the live domain, and the page in a
real headless Chromium against a rate-limited replay (slow).

The browser tests read what the page fetched and drew from ``window.__streamtomo``
and compare it with the reducer's domain; latency is frame arrival at the reducer
(``process_result`` returned with frame F counted) to the page drawing an image that
contains frame F.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from streamtomo.app.viewer import cli as viewer_cli
from streamtomo.app.viewer.server import (
    ENV_PASSWORD,
    ENV_USERNAME,
    STATIC_DIR,
    ViewerAssetsMissing,
    ViewerServer,
    ViewerTarget,
    basic_auth_from_env,
    build_app,
    start_viewer,
)
from streamtomo.hsds_bridge.domain import Domain
from streamtomo.hsds_bridge.rest_server import HdfRestServer
from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec
from streamtomo.reducer.domain_layout import new_domain
from tests.support import browser
from tests.support.replay_helpers import domain_arrays, record, replay, run_to_end

RECON = "/entry/reconstruction/data"
SINO = "/entry/sinogram/data"


# -- the proxy, without a browser ---------------------------------------------------------
class _Upstream(http.server.ThreadingHTTPServer):
    """A stand-in endpoint that records what the proxy forwards."""

    seen: list[tuple[str, str, dict[str, str], bytes]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Upstream

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.command, self.path, dict(self.headers), body))
        if self.path.startswith("/streamtomo/parameters/center") and b'"bad"' in body:
            self.send_response(400, "centre bad is not a number")
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"400: centre bad is not a number")
            return
        payload = json.dumps({"value": 7}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    server = _Upstream(("127.0.0.1", 0), _Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake_static(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>viewer</title>")
    return tmp_path


def test_proxy_pins_the_domain_adds_credentials_and_reports_a_dead_endpoint(
    upstream: _Upstream, fake_static: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_USERNAME, "reader")
    monkeypatch.setenv(ENV_PASSWORD, "s3cret")
    endpoint = f"http://127.0.0.1:{upstream.server_address[1]}"
    token = "control-token-0123456789abcdef"
    target = ViewerTarget(
        endpoint, "/a/live.h5", control=endpoint, authorization=basic_auth_from_env(), control_token=token
    )
    assert "s3cret" not in repr(target) and token not in repr(target)
    with ViewerServer(target, static_dir=fake_static).start() as viewer:
        assert "viewer" in requests.get(viewer.url, timeout=5).text
        assert requests.get(viewer.url + "viewer.json", timeout=5).json() == {
            "domain": "/a/live.h5",
            "endpoint": endpoint,
            "control": True,
        }
        response = requests.get(
            viewer.url + "hdf/datasets/d-1/value?select=[0:1]&domain=/other.h5",
            headers={"Accept": "application/octet-stream"},
            timeout=5,
        )
        assert response.json() == {"value": 7}
        method, path, headers, _ = upstream.seen[-1]
        assert method == "GET"
        assert path.startswith("/datasets/d-1/value?")
        assert "domain=/a/live.h5" in path.replace("%2F", "/")
        assert "other.h5" not in path
        assert headers["Authorization"] == "Basic cmVhZGVyOnMzY3JldA=="
        assert headers["Accept"] == "application/octet-stream"
        # control: forwarded with the control token (not the HDF credentials); a refusal keeps its reason
        assert (
            requests.post(viewer.url + "control/parameters/center", json={"value": "33"}, timeout=5).status_code == 200
        )
        method, path, headers, body = upstream.seen[-1]
        assert (method, path) == ("POST", "/streamtomo/parameters/center")
        assert headers["Authorization"] == f"Bearer {token}"
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body) == {"value": "33"}
        assert requests.get(viewer.url + "viewer.json", timeout=5).text.count(token) == 0  # the page never sees it
        # what another site can send without a preflight, or from its own origin: refused here
        forwarded = len(upstream.seen)
        assert requests.post(viewer.url + "control/parameters/center", data="33", timeout=5).status_code == 415
        assert (
            requests.post(
                viewer.url + "control/parameters/center", data="33", headers={"Content-Type": "text/plain"}, timeout=5
            ).status_code
            == 415
        )
        foreign = {"Origin": "http://evil.example"}
        assert (
            requests.post(
                viewer.url + "control/parameters/center", json={"value": "33"}, headers=foreign, timeout=5
            ).status_code
            == 403
        )
        rebound = {"Host": "evil.example:80"}  # DNS rebinding: another name for this address
        assert (
            requests.post(
                viewer.url + "control/parameters/center", json={"value": "33"}, headers=rebound, timeout=5
            ).status_code
            == 403
        )
        assert len(upstream.seen) == forwarded
        own = {"Origin": viewer.url.rstrip("/")}
        assert (
            requests.post(
                viewer.url + "control/parameters/center", json={"value": "33"}, headers=own, timeout=5
            ).status_code
            == 200
        )
        bad = requests.post(viewer.url + "control/parameters/center", json={"value": "bad"}, timeout=5)
        assert bad.status_code == 400
        assert bad.json()["message"] == "centre bad is not a number"
        assert requests.get(viewer.url + "hdf/../etc/passwd", timeout=5).status_code in (400, 404)
        upstream.shutdown()
        upstream.server_close()
        gone = requests.get(viewer.url + "hdf/?getobjs=1", timeout=15)
        assert gone.status_code == 502
        assert endpoint in gone.json()["message"]


def test_missing_page_assets_say_how_to_build_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ViewerAssetsMissing, match=r"npm ci --prefix viewer && npm run build --prefix viewer"):
        build_app(ViewerTarget("http://127.0.0.1:1", "/x.h5"), static_dir=tmp_path)
    # the command says the same, without a traceback
    monkeypatch.setattr("streamtomo.app.viewer.server.STATIC_DIR", tmp_path)
    parser = argparse.ArgumentParser()
    viewer_cli.register(parser.add_subparsers())
    args = parser.parse_args(["view", "--endpoint", "http://127.0.0.1:1", "--port", "0"])
    assert args.func(args) == 2
    assert "npm run build --prefix viewer" in capsys.readouterr().err


def test_credentials_must_come_in_pairs() -> None:
    assert basic_auth_from_env({}) is None
    with pytest.raises(ValueError, match=ENV_PASSWORD):
        basic_auth_from_env({ENV_USERNAME: "reader"})


# -- a finished domain, served by our own server (restartable) --------------------------
@pytest.fixture(scope="module")
def finished_domain(tmp_path_factory: pytest.TempPathFactory) -> Domain:
    """A complete small domain plus a centre-of-rotation sweep the test knows
    (shifted copies of the first slice)."""
    spec = SimulationSpec(rows=3, cols=48, angles=40, seed=5)
    recordings = record(ScanSimulator(spec).frames(), tmp_path_factory.mktemp("small"), spec.config())
    for run in replay(recordings, spec.config(domain="/viewer/finished.h5"), workers=1):
        run.go()
        run.wait(timeout=120)
        run.reducer.timer()
        domain: Domain = run.reducer.domain
    with domain.lock:
        slice0 = np.array(domain.dataset(RECON).array[0])
        centers = np.array([21.5, 22.5, 23.5, 24.5, 25.5])
        sweep = np.stack([np.roll(slice0, int(c - 23.5), axis=1) for c in centers]).astype(np.float32)
        domain.create_group("/entry/reconstruction/cor_sweep", {"NX_class": "NXdata", "signal": "data"})
        domain.create_dataset("/entry/reconstruction/cor_sweep/data", sweep, chunks=sweep.shape)
        domain.create_dataset("/entry/reconstruction/cor_sweep/centers", centers)
    return domain


def test_silx_opens_the_live_domain(finished_domain: Domain) -> None:
    silx_io = pytest.importorskip("silx.io", reason="pip install silx to check the silx recipe")
    from silx.io import nxdata

    with HdfRestServer() as server:
        server.start(finished_domain)
        url = f"{server.url}{finished_domain.name}"  # what `silx view URL` opens
        with silx_io.open(url) as f:
            default = nxdata.get_default(f)  # what silx view plots first: the NeXus default chain
            assert default is not None
            assert default.signal.name.endswith("/entry/reconstruction/data")
            with finished_domain.lock:
                expected = np.array(finished_domain.dataset(RECON).array)
            np.testing.assert_array_equal(default.signal[1], expected[1])


# -- the page in Chromium ------------------------------------------------------------------
@pytest.fixture(scope="module")
def built_page() -> Path:
    browser.require_chromium()
    if not (STATIC_DIR / "index.html").is_file():
        pytest.fail("the viewer page is not built: run `npm ci --prefix viewer && npm run build --prefix viewer`")
    return STATIC_DIR


def _page_slice(driver: Any) -> np.ndarray | None:
    return browser.page_floats(driver, "sliceBase64")


def _digest(values: np.ndarray | None) -> str | None:
    return None if values is None else hashlib.sha1(values.tobytes()).hexdigest()


class ArrivalClock:
    """When the reducer had counted frame F: wraps the reducer's ``process_result``."""

    def __init__(self, reducer: Any) -> None:
        self.times: dict[int, float] = {}
        original = reducer.process_result

        def timed(result: Any, parameters: Any = None) -> None:
            original(result, parameters)
            with reducer.lock:
                received = int(reducer.scan.status()["frames_received"])
            self.times.setdefault(received, time.time())

        reducer.process_result = timed

    def latencies_ms(self, renders: list[dict[str, Any]]) -> list[float]:
        out = []
        for r in renders:
            arrived = self.times.get(int(r["framesReceived"]))
            if r["panel"] == "slice" and arrived is not None:
                out.append(r["drawnAt"] - arrived * 1000)
        return out


def _apply_centre(driver: Any, value: str, expect: str, timeout: float = 10.0) -> None:
    """Type a centre and press apply, as a person would; wait for the page's answer."""
    _apply_in_box(driver, "center", value, expect, timeout)


def _apply_in_box(driver: Any, box_id: str, value: str, expect: str, timeout: float = 10.0) -> None:
    """Type ``value`` in the control panel's ``{box_id}-input`` and press its
    ``{box_id}-apply``, as a person would; wait until the page's answer says ``expect``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, f"{box_id}-input")
    # select-all + type: WebElement.clear() would bypass React's onChange
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    box.send_keys(value)
    assert box.get_attribute("value") == value
    apply = driver.find_element(By.ID, f"{box_id}-apply")
    browser.wait_until(apply.is_enabled, timeout, "the apply button")
    apply.click()
    deadline = time.monotonic() + timeout
    text = ""
    while expect not in text:
        if time.monotonic() > deadline:
            pytest.fail(f"the page did not confirm {box_id} {value}: it says {text!r}")
        time.sleep(0.05)
        found = driver.find_elements(By.ID, "control-message")
        text = found[0].text if found else ""


def _png_unlike(driver: Any, selector: str, previous: bytes) -> bytes | None:
    """The element's PNG once it differs from ``previous``, else None."""
    png: bytes = browser.element_png(driver, selector)
    return png if png != previous else None


def _control_message(driver: Any) -> str:
    return str(
        driver.execute_script("const m = document.getElementById('control-message'); return m ? m.textContent : '';")
    )


def _watch_live_scan(
    run: Any, spec: SimulationSpec, target: dict[str, np.ndarray], new_centre: str, profile: Path
) -> tuple[Path, list[dict[str, Any]]]:
    """Drive the page through a whole scan; returns the screenshot and the render log."""
    control = run.reducer.control
    with (
        start_viewer(
            run.reducer.endpoint, run.reducer.domain.name, control=control.url, control_token=control.token
        ) as viewer,
        browser.chromium(profile) as driver,
    ):
        from selenium.webdriver.common.by import By

        driver.get(viewer.url)
        browser.wait_until(
            lambda: browser.page_state(driver, "s.snapshot && s.snapshot.connection === 'live'"),
            20,
            "the page to connect",
        )
        run.go()

        # The slice changes while frames arrive (data and on-screen pixels).
        digests: set[str] = set()
        pixels: list[bytes] = []
        projections_seen: set[int] = set()
        changed_centre = False
        while not run.done:
            n = browser.page_state(driver, "s.snapshot && s.snapshot.slice ? s.snapshot.slice.nProjections : -1")
            digest = _digest(_page_slice(driver))
            if digest and 0 < n < spec.angles:
                if digest not in digests and len(pixels) < 2 and n > 10 * (len(pixels) + 1):
                    # The canvas draws a fetched slice two animation frames later, and a
                    # loaded machine delays those: capture once the render log says this
                    # slice (or a later one) is drawn. Without the wait, 1 run in 20 beside
                    # two CPU hogs captured the same pixels twice.
                    fetched = browser.page_state(driver, "s.snapshot.slice.fetchedAt")
                    browser.wait_until(
                        lambda fetched=fetched: browser.page_state(
                            driver, f"s.renders.some(r => r.panel === 'slice' && r.fetchedAt >= {fetched})"
                        ),
                        10,
                        "the new slice to be drawn",
                    )
                    png = browser.element_png(driver, ".slice-panel .vis")
                    if pixels:
                        # Two animation frames after React's commit is when the WebGL canvas
                        # is drawn on a desktop; headless Chromium draws in software, and
                        # beside two CPU hogs its pixels were the previous ones at that
                        # moment in 1 run of 20 (the same PNG twice). Wait for them to move.
                        png = browser.wait_until(
                            lambda first=pixels[0]: _png_unlike(driver, ".slice-panel .vis", first),
                            10,
                            "the slice's pixels on screen to change",
                        )
                    pixels.append(png)
                digests.add(digest)
                projections_seen.add(n)
            if not changed_centre and n >= spec.angles // 3:
                # a bad value first: the page shows the pipeline's reason
                assert not browser.severe(browser.console_entries(driver))
                _apply_centre(driver, "1e6", expect="outside the detector")
                # Chromium logs every 4xx response; this one was asked for.
                expected = browser.severe(browser.console_entries(driver))
                assert len(expected) == 1 and "control/parameters/center" in expected[0] and "400" in expected[0], (
                    expected
                )
                _apply_centre(driver, new_centre, expect=f"center set to {new_centre}")
                # stored at once, applied (slices rebuilt) by the reducer at its next publish
                browser.wait_until(
                    lambda: run.reducer.scan.config.center == new_centre, 10, "the reducer to apply the centre"
                )
                changed_centre = True
            time.sleep(0.1)
        assert changed_centre, (
            f"the scan ended before the centre could be changed: slow the replay down ({sorted(projections_seen)})"
        )
        assert len(digests) >= 3, f"the page showed too few distinct live slices: {sorted(projections_seen)}"
        # Taken is not applied: the page says so once the domain's parameters show the centre.
        browser.wait_until(
            lambda: "the live slices use it" in _control_message(driver), 20, "the page to see the centre applied"
        )
        assert len(pixels) == 2 and pixels[0] != pixels[1], "the slice pixels on screen did not change"
        run.wait(timeout=60)

        # The final image is the reconstruction in the domain (what was fetched and drawn).
        def final_matches() -> bool:
            if browser.page_state(driver, "s.snapshot.status && s.snapshot.status.state") != "finished":
                return False
            shown = _page_slice(driver)
            mine = domain_arrays(run.reducer)[RECON][0].ravel()
            return shown is not None and np.array_equal(shown, mine)

        browser.wait_until(final_matches, 15, "the page to show the final slice")
        final = domain_arrays(run.reducer)
        drawn = browser.page_state(driver, "s.renders.filter(r => r.panel === 'slice').slice(-1)[0]")
        assert drawn["nProjections"] == spec.angles
        # ... and the centre change reached the pipeline: the slices are those of a run with that centre.
        scale = float(np.abs(target[RECON]).max())
        np.testing.assert_allclose(final[RECON], target[RECON], rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_allclose(_page_slice(driver), target[RECON][0].ravel(), rtol=1e-5, atol=1e-5 * scale)
        assert "centre 33.0" in driver.find_element(By.ID, "effective-parameters").text

        # Another slice and its sinogram row, selected in the page.
        driver.find_element(By.CSS_SELECTOR, "#slice-select option[value='2']").click()
        row = list(final["/entry/sinogram/detector_row"]).index(final["/entry/reconstruction/slice_rows"][2])
        browser.wait_until(lambda: np.array_equal(_page_slice(driver), final[RECON][2].ravel()), 10, "slice 2")
        browser.wait_until(
            lambda: np.array_equal(browser.page_floats(driver, "sinogramBase64"), final[SINO][row].ravel()),
            10,
            "the sinogram of its row",
        )
        assert driver.find_element(By.ID, "scan-state").text == "finished"
        assert driver.find_element(By.ID, "projections").text == f"{spec.angles} / {spec.angles}"
        # The end-of-scan volume (on by default) is whole, and a finished scan has no reason to show.
        rows = final["/entry/reconstruction/volume"].shape[0]
        assert driver.find_element(By.ID, "volume-progress").text == f"{rows} of {rows} slices"
        assert not driver.find_elements(By.ID, "scan-reason")

        # Nothing is re-read while the published content does not change: the reducer
        # bumps generation only when something changed, and the page reads data (status
        # included) only when generation moves.
        query = "[s.fetches.slice, s.fetches.sinogram, s.snapshot.generation, s.fetches.status]"
        before = browser.page_state(driver, query)
        time.sleep(1.5)
        after = browser.page_state(driver, query)
        assert after == before, (before, after)

        shot = browser.screenshot(driver, "viewer-live-scan.png")
        renders = browser.page_state(driver, "s.renders")
        errors = browser.severe(browser.console_entries(driver))
        assert not errors, errors
    return shot, renders


@pytest.mark.slow
def test_page_follows_a_live_scan_and_sets_the_centre(built_page: Path, tmp_path: Path) -> None:
    spec = SimulationSpec(rows=6, cols=64, angles=120, seed=3)
    config = spec.config()
    recordings = record(ScanSimulator(spec).frames(), tmp_path / "scan", config)
    new_centre = "33.0"
    target = run_to_end(recordings, spec.config(center=new_centre), workers=2)

    # 10 Hz: the page must have time to show the scan on a loaded machine too (each
    # look at it through selenium takes a fraction of a second there).
    for run in replay(recordings, config, workers=2, rate_hz=10):
        clock = ArrivalClock(run.reducer)
        shot, renders = _watch_live_scan(run, spec, target, new_centre, tmp_path / "profile")
    latencies = clock.latencies_ms(renders)
    assert latencies, "no slice render could be matched to a frame arrival"
    print(
        f"\nviewer update latency (frame arrival at the reducer -> slice pixels drawn), {len(latencies)} updates: "
        f"median {statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms "
        f"(publish every 250 ms + page poll every 250 ms); screenshot {shot}"
    )


@pytest.mark.slow
def test_page_sets_the_slice_rows_and_the_slices_are_those_rows(built_page: Path, tmp_path: Path) -> None:
    """Which detector rows are reconstructed, chosen in the page (the control API took
    them, the page had no box for them): the slices become those of a run with those
    rows, and the page lists and shows them."""
    from selenium.webdriver.common.by import By

    spec = SimulationSpec(rows=6, cols=64, angles=60, seed=4)
    config = spec.config(volume=False)
    recordings = record(ScanSimulator(spec).frames(), tmp_path / "scan", config)
    target = run_to_end(recordings, spec.config(volume=False, slice_rows="1,4"), workers=1)
    for run in replay(recordings, config, workers=2):
        run.go()
        run.wait(timeout=120)
        control = run.reducer.control
        before = domain_arrays(run.reducer)
        assert list(before["/entry/reconstruction/slice_rows"]) != [1, 4]  # the default rows first
        with (
            start_viewer(
                run.reducer.endpoint, run.reducer.domain.name, control=control.url, control_token=control.token
            ) as viewer,
            browser.chromium(tmp_path / "profile") as driver,
        ):
            driver.get(viewer.url)
            browser.wait_until(
                lambda shown=before[RECON][0]: np.array_equal(_page_slice(driver), shown.ravel()),
                20,
                "the finished scan's slice",
            )
            assert not driver.find_element(By.ID, "slice-rows-apply").is_enabled()  # nothing typed: nothing to apply
            _apply_in_box(driver, "slice-rows", "1,4", "slice_rows set to 1,4: the live slices use it", 30)
            final = domain_arrays(run.reducer)
            assert list(final["/entry/reconstruction/slice_rows"]) == [1, 4]
            scale = float(np.abs(target[RECON]).max())
            np.testing.assert_allclose(final[RECON], target[RECON], rtol=1e-5, atol=1e-5 * scale)
            # the page shows them: the first slice, then the second picked in its list
            browser.wait_until(lambda a=final[RECON][0]: np.array_equal(_page_slice(driver), a.ravel()), 20, "row 1")
            driver.find_element(By.CSS_SELECTOR, "#slice-select option[value='1']").click()
            browser.wait_until(lambda a=final[RECON][1]: np.array_equal(_page_slice(driver), a.ravel()), 20, "row 4")
            assert "rows 1,4" in driver.find_element(By.ID, "effective-parameters").text
            # rows the sinogram does not hold: the pipeline's reason, and nothing changes
            _apply_in_box(driver, "slice-rows", "99", "slice_rows not changed:", 20)
            assert _control_message(driver).startswith("slice_rows not changed:")
            assert "outside 0..5" in _control_message(driver)
            assert list(domain_arrays(run.reducer)["/entry/reconstruction/slice_rows"]) == [1, 4]
            # 'Default' (any case) goes back to the default rows
            _apply_in_box(driver, "slice-rows", "Default", "slice_rows set to default: the live slices use it", 30)
            back = domain_arrays(run.reducer)
            assert list(back["/entry/reconstruction/slice_rows"]) == list(before["/entry/reconstruction/slice_rows"])
            np.testing.assert_allclose(back[RECON], before[RECON], rtol=1e-5, atol=1e-5 * scale)
            expected = browser.severe(browser.console_entries(driver))  # Chromium logs the 400 it was asked for
            assert all("control/parameters/slice_rows" in e and "400" in e for e in expected), expected


def _banner(driver: Any) -> str:
    return str(driver.execute_script("const b = document.getElementById('banner'); return b ? b.textContent : '';"))


def test_page_shows_why_a_scan_failed(built_page: Path, tmp_path: Path) -> None:
    """``/entry/status/reason`` reaches the page beside the state (a failed, stopped or
    incomplete scan says why); a domain with nothing but its status is enough."""
    from selenium.webdriver.common.by import By

    from streamtomo.pipeline.streaming.live_scan import LiveScan
    from streamtomo.reducer.domain_layout import new_domain, update_domain

    reason = "the reducer stopped before the scan ended: 12 frames received"
    scan = LiveScan(SimulationSpec(rows=3, cols=48, angles=40).config(domain="/viewer/failed.h5"))
    scan.state, scan.reason = "failed", reason
    domain = new_domain("/viewer/failed.h5")
    with domain.lock:
        assert update_domain(domain, scan.snapshot())
    with (
        HdfRestServer() as server,
        browser.chromium(tmp_path / "profile") as driver,
    ):
        server.start(domain)
        with start_viewer(server.url, domain.name, control=None) as viewer:
            driver.get(viewer.url)

            def shown() -> str | None:
                found = driver.find_elements(By.ID, "scan-reason")
                return found[0].text if found else None

            assert browser.wait_until(shown, 20, "the reason") == reason
            assert driver.find_element(By.ID, "scan-state").text == "failed"
            assert not driver.find_elements(By.ID, "volume-progress")  # no volume was under way
            # The images that will not come are not "waited for" (review of the viewer).
            waiting = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".vis.waiting")]
            assert waiting == [
                "no slices: the scan failed without any (see its state and reason)",
                "no sinogram: the scan failed without one (see its state and reason)",
            ], waiting


@pytest.mark.slow
def test_page_reports_a_missing_domain_and_recovers_when_the_endpoint_returns(
    built_page: Path, finished_domain: Domain, tmp_path: Path
) -> None:
    server = HdfRestServer()
    server.start(finished_domain)
    endpoint = server.url
    port = int(endpoint.rsplit(":", 1)[1])
    try:
        with browser.chromium(tmp_path / "profile") as driver:
            # A domain that does not exist: a clear message, no images.
            with start_viewer(endpoint, "/viewer/no-such-scan.h5", control=None) as viewer:
                driver.get(viewer.url)
                text = browser.wait_until(
                    lambda: _banner(driver) if "Domain not found" in _banner(driver) else None,
                    15,
                    "the missing-domain message",
                )
                assert "/viewer/no-such-scan.h5" in text
                assert "retrying" in text.lower()
            browser.console_entries(driver)  # the 404s are logged by Chromium: expected here

            with start_viewer(endpoint, finished_domain.name, control=None) as viewer:
                driver.get(viewer.url)
                with finished_domain.lock:
                    expected = np.array(finished_domain.dataset(RECON).array[0]).ravel()
                browser.wait_until(lambda: np.array_equal(_page_slice(driver), expected), 20, "the slice")
                # Automatic contrast spans the 0.5-99.5 % percentiles; manual limits replace it.
                values = np.sort(expected.astype(np.float64))
                at = [values[int(np.floor(p / 100 * (values.size - 1) + 0.5))] for p in (0.5, 99.5)]
                assert browser.page_state(driver, "s.colourDomain") == pytest.approx(at, rel=1e-6)
                driver.find_element("id", "slice-colour-min").send_keys("0")
                driver.find_element("id", "slice-colour-max").send_keys("0.05")
                browser.wait_until(
                    lambda: browser.page_state(driver, "s.colourDomain") == [0, 0.05], 5, "the manual colour limits"
                )
                # The CoR sweep strip is shown when the domain has one, centres on its axis.
                browser.wait_until(
                    lambda: driver.execute_script("return !!document.getElementById('sweep-panel')"),
                    10,
                    "the sweep panel",
                )
                sweep_text = driver.find_element("id", "sweep-panel").text
                assert "5 centres of rotation" in sweep_text and "25.5" in sweep_text, sweep_text
                # Which row the strip is, and which centre the slices use (review of the viewer).
                rows = list(finished_domain.dataset("/entry/reconstruction/slice_rows").array)
                assert f"detector row {rows[len(rows) // 2]} (the middle live slice)" in sweep_text, sweep_text
                assert sweep_text.count("(in use)") == 1, sweep_text
                assert "read-only" in driver.find_element("css selector", ".control-panel").text
                assert not browser.severe(browser.console_entries(driver))

                # The endpoint goes away ...
                server.close()
                gone = browser.wait_until(
                    lambda: _banner(driver) if "not reachable" in _banner(driver) else None,
                    15,
                    "the endpoint-gone message",
                )
                assert endpoint in gone
                browser.screenshot(driver, "viewer-endpoint-gone.png")
                # ... and comes back on the same address: the page recovers by itself.
                server = HdfRestServer(port=port)
                server.start(finished_domain)
                browser.wait_until(
                    lambda: browser.page_state(driver, "s.snapshot.connection") == "live", 15, "the page to recover"
                )
                assert _banner(driver) == ""
                browser.wait_until(
                    lambda: np.array_equal(_page_slice(driver), expected), 10, "the slice after recovery"
                )
                browser.console_entries(driver)
    finally:
        server.close()


def _scan_domain(name: str, cols: int, seed: int, parameters: dict[str, str] | None = None) -> Domain:
    """A running scan's domain as the reducer lays it out: slices, sinogram, progress."""
    rng = np.random.default_rng(seed)
    domain = new_domain(name)
    with domain.lock:
        domain.create_group("/entry/sinogram", {"NX_class": "NXdata"})
        domain.create_dataset("/entry/sinogram/data", rng.random((3, 20, cols), dtype=np.float32))
        domain.create_dataset("/entry/sinogram/rotation_angle", np.linspace(0, 180, 20))
        domain.create_dataset("/entry/sinogram/frames_per_angle", np.ones(20, np.int32))
        domain.create_dataset("/entry/sinogram/detector_row", np.arange(3, dtype=np.int64))
        domain.create_group("/entry/reconstruction", {"NX_class": "NXdata"})
        domain.create_dataset("/entry/reconstruction/data", rng.random((3, cols, cols), dtype=np.float32))
        domain.create_dataset("/entry/reconstruction/slice_rows", np.arange(3, dtype=np.int64))
        domain.create_dataset("/entry/reconstruction/n_projections", np.int64(20))
        domain.create_dataset(
            "/entry/reconstruction/parameters", json.dumps(parameters or {"center": "", "filter": "ramp"})
        )
        domain.dataset("/entry/status/state").set_scalar("running")
        domain.dataset("/entry/status/frames_received").set_scalar(np.int64(26))
        for _ in range(3 if cols < 64 else 9):
            generation = domain.commit()
        domain.dataset("/entry/status/generation").set_scalar(np.int64(generation))
    return domain


def test_the_next_scan_replaces_the_last_ones_images_whatever_its_size(built_page: Path, tmp_path: Path) -> None:
    """Each scan is a new domain of the same name, counting its generation from 0, its
    objects at the same ids on our server. The page drew the next scan's 32^2 slices
    with the last scan's 64^2 shape, and showed the last scan's images and coverage as
    the new one's while it waited for its first frame."""
    name = "/viewer/next.h5"
    first = _scan_domain(name, 64, seed=1)
    with HdfRestServer() as server, browser.chromium(tmp_path / "profile") as driver:
        server.start(first)
        with start_viewer(server.url, name, control=None) as viewer:
            driver.get(viewer.url)
            expected = np.array(first.dataset(RECON).array[0]).ravel()
            browser.wait_until(lambda: np.array_equal(_page_slice(driver), expected), 20, "the first scan's slice")

            waiting = new_domain(name)
            with waiting.lock:
                waiting.dataset("/entry/status/generation").set_scalar(np.int64(waiting.commit()))
            server.start(waiting)  # the next scan, before its first frame: nothing to show
            browser.wait_until(
                lambda: browser.page_state(
                    driver,
                    "s.snapshot.status && s.snapshot.status.state === 'waiting' && !s.snapshot.slice "
                    "&& !s.snapshot.sinogram && !s.snapshot.framesPerAngle",
                ),
                20,
                "the waiting scan without the last one's images",
            )

            second = _scan_domain(name, 32, seed=2)
            server.start(second)  # its frames come: another detector size
            expected = np.array(second.dataset(RECON).array[0]).ravel()
            browser.wait_until(lambda: np.array_equal(_page_slice(driver), expected), 20, "the next scan's slice")
            assert browser.page_state(driver, "s.snapshot.slice.shape") == [32, 32]
            assert browser.page_state(driver, "s.snapshot.connection") == "live"
            assert not browser.severe(browser.console_entries(driver))


def test_read_only_controls_show_what_the_slices_use(built_page: Path, tmp_path: Path) -> None:
    """Without a control API the centre and filter controls showed the defaults (the
    detector middle, ramp), not the centre and filter the scan's slices were made with."""
    name = "/viewer/read-only.h5"
    domain = _scan_domain(name, 48, seed=3, parameters={"center": "30.5", "filter": "hann"})
    with HdfRestServer() as server, browser.chromium(tmp_path / "profile") as driver:
        server.start(domain)
        with start_viewer(server.url, name, control=None) as viewer:
            driver.get(viewer.url)
            browser.wait_until(
                lambda: "centre 30.5, filter hann" in driver.find_element("id", "effective-parameters").text,
                20,
                "the domain's parameters",
            )
            assert "read-only" in driver.find_element("css selector", ".control-panel").text
            assert driver.find_element("id", "filter-select").get_attribute("value") == "hann"
            assert driver.find_element("id", "center-input").get_attribute("placeholder") == "30.5"
            assert not browser.severe(browser.console_entries(driver))


class _LoginPage(http.server.BaseHTTPRequestHandler):
    """An endpoint behind a proxy that answers every request with its login page."""

    def do_GET(self) -> None:
        page = b"<!doctype html><title>sign in</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


def test_an_endpoint_that_answers_html_is_not_called_unreachable(built_page: Path, tmp_path: Path) -> None:
    """Every error that was not an HTTP status read 'Viewer server not reachable',
    also a login page where JSON was expected (the viewer server was there)."""
    login = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LoginPage)
    threading.Thread(target=login.serve_forever, daemon=True).start()
    try:
        with (
            start_viewer(f"http://127.0.0.1:{login.server_address[1]}", "/d.h5", control=None) as viewer,
            browser.chromium(tmp_path / "profile") as driver,
        ):
            driver.get(viewer.url)
            text = browser.wait_until(
                lambda: _banner(driver) if "Unexpected answer" in _banner(driver) else None,
                15,
                "the unexpected-answer message",
            )
            assert "not JSON" in text and "not reachable" not in text, text
    finally:
        login.shutdown()
        login.server_close()


@pytest.mark.parametrize("control", [False, True], ids=["read-only", "with controls"])
def test_on_every_interface_the_command_says_how_other_machines_reach_the_page(
    built_page: Path, tmp_path: Path, control: bool
) -> None:
    """``view --host 0.0.0.0`` printed only its loopback URL, of no use to a browser on
    another machine; nor did it say that the controls answer only their own origins.
    (Controls off loopback need ``--remote-control``: without it ``view`` refuses them.)"""
    import queue
    import subprocess
    import sys

    token = tmp_path / "token"
    token.write_text("t" * 32)
    token.chmod(0o600)
    extra = (
        ["--control", "http://127.0.0.1:1", "--control-token-file", str(token), "--remote-control"] if control else []
    )
    command = [sys.executable, "-m", "streamtomo.app.cli", "view", "--endpoint", "http://127.0.0.1:1"]
    view = subprocess.Popen([*command, "--host", "0.0.0.0", "--port", "0", *extra], stdout=subprocess.PIPE, text=True)
    try:
        assert view.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in view.stdout], daemon=True).start()
        first, second = lines.get(timeout=30), lines.get(timeout=10)
        port = first.strip().rsplit(":", 1)[1].rstrip("/")
        address = f"http://{viewer_cli.machine_name()}:{port}"
        assert first.startswith("viewer: http://127.0.0.1:")
        assert f"from another machine open {address}/" in second
        assert (f"answer a browser there only with --origin {address}" in second) == control
        # That address serves the page (a browser elsewhere sends it as its Host).
        page = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": address[7:]}, timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        view.terminate()
        assert view.wait(30) == 0
    if control:  # the same without --remote-control: refused, saying why
        refused = subprocess.run([*command, "--host", "0.0.0.0", *extra[:-1]], capture_output=True, text=True)
        assert refused.returncode == 2 and "whoever reaches that address could change the scan" in refused.stderr


def test_a_new_scan_starts_with_an_empty_control_panel_and_the_answer_is_shown(
    built_page: Path, tmp_path: Path
) -> None:
    """The panel kept the last scan's centre in its box and its message ("center set to
    60.5: the live slices use it") into the next scan, one click from applying the old
    centre to it; and it replaced the control API's answer (after the scan's end: the
    volume and the final file keep the scan's settings) by "rebuilt in the background"."""
    from selenium.webdriver.common.by import By

    from streamtomo.hsds_bridge.control_api import ControlServer, ControlSettings

    name = "/viewer/controls.h5"
    stored = {"center": "", "filter": "ramp"}
    after_the_end = "stored; the scan has ended and its volume is being made with the scan's settings"

    def sink(parameter: str, value: str) -> str:
        stored[parameter] = value
        return after_the_end

    first = _scan_domain(name, 64, seed=1)
    with (
        HdfRestServer() as server,
        ControlServer(ControlSettings(), sink, lambda: dict(stored)).start() as control,
        browser.chromium(tmp_path / "profile") as driver,
    ):
        server.start(first)
        with start_viewer(server.url, name, control=control.url, control_token=control.token) as viewer:
            driver.get(viewer.url)
            expected = np.array(first.dataset(RECON).array[0]).ravel()
            browser.wait_until(lambda: np.array_equal(_page_slice(driver), expected), 20, "the first scan's slice")
            _apply_centre(driver, "30.5", f"center set to 30.5: {after_the_end}")
            assert stored["center"] == "30.5"
            epoch = browser.page_state(driver, "s.snapshot.scanEpoch")

            second = _scan_domain(name, 32, seed=2)
            server.start(second)  # the next scan
            browser.wait_until(
                lambda: browser.page_state(driver, "s.snapshot.scanEpoch") > epoch, 20, "the page to start over"
            )
            box = browser.wait_until(lambda: driver.find_elements(By.ID, "center-input"), 20, "the centre box")[0]
            assert box.get_attribute("value") == ""
            assert _control_message(driver) == ""
            assert not browser.severe(browser.console_entries(driver))
