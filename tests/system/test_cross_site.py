"""A page on another origin, in a real headless Chromium, tries to change a running scan.

It is what any page a scientist has open could do: ``fetch`` with ``mode: 'no-cors'``
(a text/plain POST needs no CORS preflight), a JSON ``fetch`` (needs one), and an HTML
form posted into an iframe, against the live domain's port, the viewer's server and
the control API. None of them may change the centre or the filter. The viewer page
itself, from its own origin, still can.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests
from aiohttp import web

from streamtomo.app.runner import ReplayRun
from streamtomo.app.viewer.server import STATIC_DIR, start_viewer
from streamtomo.hsds_bridge.http_thread import BackgroundHttpServer
from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec
from tests.support import browser
from tests.support.replay_helpers import record, replay

pytestmark = pytest.mark.slow

ATTACK_PAGE = """<!doctype html><title>another site</title><body><iframe name="sink"></iframe><script>
const T = %(targets)s;
const results = [];
async function attempt(name, url, init) {
  try { const r = await fetch(url, init); results.push([name, r.type, r.status]); }
  catch (e) { results.push([name, 'blocked', String(e)]); }
}
function formPost(url) {
  // enctype text/plain: the body reads {"value":"hann","x":"="} and needs no preflight
  return new Promise((resolve) => {
    const frame = document.querySelector('iframe');
    frame.onload = () => resolve();
    const form = document.createElement('form');
    form.method = 'POST'; form.action = url; form.enctype = 'text/plain'; form.target = 'sink';
    const input = document.createElement('input');
    input.name = '{"value":"hann","x":"'; input.value = '"}';
    form.appendChild(input); document.body.appendChild(form); form.submit();
    setTimeout(resolve, 3000);
  });
}
(async () => {
  const plain = (body) => ({ method: 'POST', mode: 'no-cors', body });
  const json = (body) => ({ method: 'POST', headers: { 'Content-Type': 'application/json' }, body });
  await attempt('live port, no-cors', T.live + '/streamtomo/parameters/center', plain('20'));
  await attempt('live port, no-cors filter', T.live + '/streamtomo/parameters/filter', plain('hann'));
  await attempt('viewer, no-cors', T.viewer + 'control/parameters/center', plain('20'));
  await attempt('viewer, no-cors JSON text', T.viewer + 'control/parameters/filter', plain('{"value":"hann"}'));
  await attempt('viewer, no-cors JSON type', T.viewer + 'control/parameters/filter',
                { ...json('{"value":"hann"}'), mode: 'no-cors' });
  await attempt('viewer, cors JSON', T.viewer + 'control/parameters/filter', json('{"value":"hann"}'));
  await attempt('control, no-cors', T.control + '/streamtomo/parameters/center', plain('{"value":"20"}'));
  await attempt('control, cors JSON', T.control + '/streamtomo/parameters/filter', json('{"value":"hann"}'));
  await formPost(T.viewer + 'control/parameters/filter');
  await formPost(T.control + '/streamtomo/parameters/filter');
  window.__attack = results;
})();
</script></body>"""


@contextlib.contextmanager
def _another_site(page: str) -> Iterator[str]:
    """A page of another site, served on 127.0.0.1 at a free port; yields its URL."""

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    def app() -> web.Application:
        served = web.Application()
        served.router.add_get("/", serve)
        return served

    server = BackgroundHttpServer(app, "127.0.0.1", 0, "another site's page")
    server.start()
    try:
        yield server.url()
    finally:
        server.close(10)


@pytest.fixture(scope="module")
def built_page() -> Path:
    browser.require_chromium()
    if not (STATIC_DIR / "index.html").is_file():
        pytest.fail("the viewer page is not built: run `make viewer`")
    return STATIC_DIR


@pytest.fixture
def finished_run(tmp_path: Path) -> Iterator[ReplayRun]:
    spec = SimulationSpec(rows=6, cols=64, angles=60, seed=3)
    recordings = record(ScanSimulator(spec).frames(), tmp_path / "scan", spec.config())
    for run in replay(recordings, spec.config(), workers=1):
        run.go()
        run.wait(timeout=120)
        yield run


def _effective(run: ReplayRun) -> tuple[str, str]:
    reducer: Any = run.reducer
    reducer.timer(reducer._parameters)  # what the reducer's timer thread does next
    return reducer.scan.config.center, reducer.scan.config.filter


def test_another_origin_cannot_change_the_scan_but_the_viewer_can(
    built_page: Path, finished_run: ReplayRun, tmp_path: Path
) -> None:
    reducer: Any = finished_run.reducer
    before = _effective(finished_run)
    assert before[0] != "20" and before[1] != "hann"
    control = reducer.control
    with start_viewer(
        reducer.endpoint, reducer.domain.name, control=control.url, control_token=control.token
    ) as viewer:
        targets = {"live": reducer.endpoint, "viewer": viewer.url, "control": control.url}

        with (
            _another_site(ATTACK_PAGE % {"targets": json.dumps(targets)}) as attacker,
            browser.chromium(tmp_path / "profile") as driver,
        ):
            driver.get(attacker + "/")
            results = browser.wait_until(
                lambda: driver.execute_script("return window.__attack"), 30, "the attack page to finish"
            )
            assert len(results) == 8, results
            # Whatever the browser let through, nothing changed.
            assert _effective(finished_run) == before, f"another origin changed the scan: {results}"

            # The viewer page, from its own origin, through its server (which adds the token).
            driver.get(viewer.url)
            answer = driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "fetch('control/parameters/center', {method: 'POST', headers: {'Content-Type': 'application/json'},"
                " body: JSON.stringify({value: '20'})}).then(r => done(r.status), e => done(String(e)));"
            )
            assert answer == 202
            assert _effective(finished_run) == ("20", before[1])


def test_the_viewer_relays_a_whole_body_to_a_parameter_path_only(built_page: Path) -> None:
    """The viewer attaches the control token to what it relays: a name that is a path
    ('..%2F..%2Fadmin') must not reach another path of the control host, and a body
    that comes in two TCP segments must go on whole (it was cut at the first)."""
    import socket
    import time

    from streamtomo.app.viewer.server import start_viewer

    seen: list[tuple[str, str, bytes]] = []

    async def record_it(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Authorization", ""), await request.read()))
        return web.json_response({"accepted": True}, status=202)

    def upstream() -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record_it)
        return app

    control = BackgroundHttpServer(upstream, "127.0.0.1", 0, "recording control API")
    control.start()
    try:
        with start_viewer(
            "http://127.0.0.1:9", "/d.h5", control=f"http://127.0.0.1:{control.port}/ctl", control_token="t" * 32
        ) as viewer:
            port = int(viewer.url.rstrip("/").rsplit(":", 1)[1])

            def post(name: str, body: bytes, pause: float = 0.0) -> bytes:
                head = (
                    f"POST /control/parameters/{name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode()
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(head + body[:20])
                    time.sleep(pause)
                    s.sendall(body[20:])
                    return s.makefile("rb").readline()

            for name in ("..%2F..%2F..%2Fadmin", "%2e%2e", "center%3Fx=1"):
                assert b" 400 " in post(name, b'{"value": "1"}'), name
            assert seen == []
            body = json.dumps({"value": "1" * 100}).encode()
            assert b" 202 " in post("center", body, pause=0.3)
            assert seen == [("/ctl/streamtomo/parameters/center", "Bearer " + "t" * 32, body)]
    finally:
        control.close(10)


def test_the_viewer_cannot_be_framed_and_keeps_its_controls_off_the_network(built_page: Path) -> None:
    """Another site could frame the page and lead a user's clicks to its controls; and
    on 0.0.0.0 its Host and Origin checks stop browsers, not a client that forges them:
    whoever reached the port changed the scan with the token the viewer attached."""
    with start_viewer("http://127.0.0.1:9", "/d.h5") as viewer:
        page = requests.get(viewer.url, timeout=10)
        assert page.status_code == 200
        policy = [part.strip() for part in page.headers["Content-Security-Policy"].split(";")]
        assert "frame-ancestors 'none'" in policy
        # Only its own scripts, and requests to its own origin: nothing injected runs or leaks.
        assert "script-src 'self' 'unsafe-eval'" in policy and "connect-src 'self'" in policy
        assert "object-src 'none'" in policy and "base-uri 'none'" in policy
        assert page.headers["X-Frame-Options"] == "DENY"
    with pytest.raises(ValueError, match="--remote-control"):
        start_viewer(
            "http://127.0.0.1:9", "/d.h5", host="0.0.0.0", control="http://127.0.0.1:1", control_token="t" * 32
        )
    with start_viewer(
        "http://127.0.0.1:9",
        "/d.h5",
        host="0.0.0.0",
        control="http://127.0.0.1:1",
        control_token="t" * 32,
        remote_control=True,  # an operator's word that only a proxy or trusted peers reach the port
    ) as viewer:
        assert requests.get(viewer.url, timeout=10).status_code == 200
    with start_viewer("http://127.0.0.1:9", "/d.h5", host="0.0.0.0") as viewer:  # read-only: nothing to guard
        assert requests.get(viewer.url, timeout=10).status_code == 200


PLANTING_PAGE = """<!doctype html><title>another site</title><script>
fetch(%(url)s, {method: 'POST', mode: 'no-cors'}).then(() => window.__sent = 1, () => window.__sent = 1);
</script>"""
MARKER = "4242.5"
# A script (it stopped the scan through the page's own origin) and a redirect (under a
# policy that runs no injected script, it still sent whoever opened the page elsewhere).
PAYLOAD = (
    f"<img src=x onerror=\"fetch('/api/v1/parameter/center',{{method:'POST',body:'{MARKER}'}})\">"
    '<meta http-equiv="refresh" content="0;url=http://127.0.0.1:9/phished">'
)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (apt-get install redis-server)")
def test_markup_planted_in_the_controllers_log_is_text_in_its_status_page(built_page: Path, tmp_path: Path) -> None:
    """A refused request from another site was logged with its path, and dranspose's
    status page wrote its log with innerHTML: opened later, the page ran the path's
    script in the controller's origin, whose POST changed the centre (or stopped the
    scan); under a script policy alone, a planted meta refresh still redirected it."""
    from streamtomo.app.deployment import LocalDeployment

    with LocalDeployment(workers=1, run_dir=tmp_path / "deployment") as deployment:
        controller = deployment.state.controller_url
        center = f"{controller}/api/v1/parameter/center"
        before = requests.get(center, timeout=10).content
        url = f"{controller}/x{quote(PAYLOAD, safe='')}"

        with (
            _another_site(PLANTING_PAGE % {"url": json.dumps(url)}) as attacker,
            browser.chromium(tmp_path / "profile") as driver,
        ):
            # "localhost" is another site than the controller's 127.0.0.1.
            driver.get(attacker.replace("127.0.0.1", "localhost") + "/")
            browser.wait_until(lambda: driver.execute_script("return window.__sent"), 30, "the request")
            browser.wait_until(
                lambda: any(
                    "http-equiv" in e["msg"] for e in requests.get(f"{controller}/api/v1/logs", timeout=10).json()
                ),
                30,
                "the refused request's path in the controller's log",
            )
            driver.get(controller + "/")
            # The page's own script runs: its log table shows the planted line, as text.
            browser.wait_until(
                lambda: driver.execute_script(
                    "const t = document.querySelector('#logs table');"
                    "return t && t.textContent.includes('http-equiv') && t.textContent.includes('onerror');"
                ),
                30,
                "the status page's log table with the planted line",
            )
            assert driver.execute_script("return document.querySelectorAll('#logs img, #logs meta').length") == 0
            assert driver.execute_script("return document.getElementById('progress').textContent").startswith("{")
            browser.wait_until(lambda: requests.get(center, timeout=10).content == before, 5, "the centre")
            assert driver.current_url.rstrip("/") == controller  # not redirected
        assert requests.get(center, timeout=10).content == before != MARKER.encode()
        # The same POST from the controller's own origin, had it run: refused.
        forged = requests.post(
            center, data=MARKER, headers={"Origin": controller, "Sec-Fetch-Site": "same-origin"}, timeout=10
        )
        assert forged.status_code == 403
        assert requests.get(center, timeout=10).content == before
        assert deployment.error_lines() == []


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (apt-get install redis-server)")
def test_a_rebound_name_reads_neither_the_controller_nor_the_live_domain(built_page: Path, tmp_path: Path) -> None:
    """DNS rebinding, as Chromium does it: a page of rebound.test, its name then resolved
    to 127.0.0.1, reads the ports as its own origin. Over http Chromium sends those reads
    with no Origin and no Sec-Fetch-Site, so a first fix that checked the Host only
    beside them let the page read the controller's config and logs and the live scan."""
    from streamtomo.app.deployment import LocalDeployment

    with LocalDeployment(workers=1, run_dir=tmp_path / "deployment") as deployment:
        controller = urlsplit(deployment.state.controller_url)
        live = urlsplit(deployment.state.live_endpoint)
        rules = "--host-resolver-rules=MAP rebound.test 127.0.0.1"
        with browser.chromium(tmp_path / "profile", extra_flags=(rules,)) as driver:
            for port, path in (
                (controller.port, "/api/v1/config"),
                (live.port, f"/?domain={quote('/streamtomo/live.h5')}"),
            ):
                driver.get(f"http://rebound.test:{port}/")
                answer = driver.execute_async_script(
                    "const done = arguments[arguments.length - 1];"
                    "fetch(arguments[0]).then(r => r.text().then(t => done([r.status, t])), e => done([0, String(e)]));",
                    path,
                )
                assert answer[0] == 403 and "rebound.test" in answer[1], (port, answer)
        # Under its own address the same reads are answered.
        assert requests.get(f"{deployment.state.controller_url}/api/v1/config", timeout=10).status_code == 200
        assert deployment.error_lines() == []
