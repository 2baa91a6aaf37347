"""Who may change a running scan: each attack we know of, against real servers.

A replay runs the real reducer, which serves the live domain (read-only) and the
control API (token required) on free loopback ports; requests are plain HTTP.
"""

from __future__ import annotations

import socket
import stat
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import h5py
import pytest
import requests

from streamtomo.app.runner import ReplayRun
from streamtomo.hsds_bridge.nexus_file import write_nexus
from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec
from streamtomo.pipeline.streaming.live_scan import LiveScan
from tests.support.replay_helpers import record, replay

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulationSpec, list[Path]]:
    spec = SimulationSpec(rows=6, cols=64, angles=90, seed=3)
    return spec, record(ScanSimulator(spec).frames(), tmp_path_factory.mktemp("scan"), spec.config())


def _post(url: str, value: Any, token: str | None, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(url, json={"value": value}, headers=headers, timeout=10, **kwargs)


def _wait_projections(run: ReplayRun, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while run.reducer.scan.n_projections < n:
        assert not run.done, "the scan ended before the change: slow the replay down"
        assert time.monotonic() < deadline, "the scan did not start"
        time.sleep(0.01)


def _raw_status(url: str, headers: list[bytes], body: bytes | None = None) -> int:
    """The status of a request sent byte for byte (headers no HTTP client would encode)."""
    parts = urllib.parse.urlsplit(url)
    method = b"GET" if body is None else b"POST"
    request = b"\r\n".join(
        [method + b" " + parts.path.encode() + b" HTTP/1.1", b"Host: " + parts.netloc.encode(), *headers]
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as connection:
        connection.sendall(request + b"\r\nConnection: close\r\n\r\n" + (body or b""))
        answer = connection.makefile("rb").readline()
    return int(answer.split()[1])


def _json_headers(token: str, length: int) -> list[bytes]:
    return [
        b"Authorization: Bearer " + token.encode(),
        b"Content-Type: application/json",
        b"Content-Length: " + str(length).encode(),
    ]


def _stored(run: ReplayRun, name: str) -> Any:
    parameter = run.reducer._parameters.get(name)
    return None if parameter is None else parameter.data


def test_live_port_is_read_only_and_the_control_api_needs_the_token(
    small_scan: tuple[SimulationSpec, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    spec, recordings = small_scan
    for run in replay(recordings, spec.config(), workers=1):
        run.go()
        run.wait(timeout=120)
        reducer = run.reducer
        centre_before = _stored(run, "center")

        # The live domain's port: reads only, nothing about parameters at all.
        live = f"{reducer.endpoint}/streamtomo/parameters"
        assert requests.post(f"{live}/center", data="10", timeout=5).status_code == 403
        assert requests.post(f"{live}/center", json={"value": "10"}, timeout=5).status_code == 403
        assert requests.get(live, timeout=5).status_code == 404
        assert requests.get(f"{reducer.endpoint}/about", timeout=5).status_code == 200

        # The control API: another port, a token from a private file.
        control = reducer.control
        assert control.url != reducer.endpoint
        mode = stat.S_IMODE(control.token_file.stat().st_mode)
        assert mode == 0o600, oct(mode)
        token = control.token_file.read_text().strip()
        assert len(token) >= 32
        url = f"{control.url}/streamtomo/parameters"
        assert requests.get(url, timeout=5).status_code == 401
        assert _post(f"{url}/center", "10", None).status_code == 401
        assert _post(f"{url}/center", "10", "not-the-token").status_code == 401
        assert _post(f"{url}/center", "10", token + "x").status_code == 401
        # ... in the query string it counts for nothing
        assert requests.post(f"{url}/center?token={token}", json={"value": "10"}, timeout=5).status_code == 401
        # text/plain (what a cross-site page may send without asking) is refused even with the token
        plain = requests.post(f"{url}/center", data="10", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert plain.status_code == 415
        # a browser origin that is not a configured viewer: refused before the token is looked at
        foreign = requests.post(
            f"{url}/center",
            json={"value": "10"},
            headers={"Authorization": f"Bearer {token}", "Origin": "http://evil.example"},
            timeout=5,
        )
        assert foreign.status_code == 403
        # A token header that is not UTF-8: 401 like any wrong token (it was a 500 and an ERROR).
        assert _raw_status(url, [b"Authorization: Bearer \xff\xfe" + token.encode()]) == 401
        # JSON nested past the parser's recursion limit, with the token: 400 (it was a 500).
        deep = b"[" * 1000
        assert _raw_status(f"{url}/center", _json_headers(token, len(deep)), deep) == 400
        assert _stored(run, "center") == centre_before, "a refused request changed the parameter"

        # With the token: accepted (202, the rebuild happens off the request path).
        got = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert got.status_code == 200 and got.json()["parameters"]["center"] == spec.config().center
        accepted = _post(f"{url}/center", "30.5", token)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["value"] == "30.5"
        assert _stored(run, "center") == b"30.5"
        reducer.timer(reducer._parameters)  # what dranspose's timer thread does next
        assert reducer.scan.config.center == "30.5"
        assert _post(f"{url}/n_projections", 5, token).status_code == 400

        # The token never reaches a log line.
        assert all(token not in record.getMessage() for record in caplog.records)
        assert token not in repr(control)


def test_refused_values_answer_400_change_nothing_and_the_scan_ends_with_its_file(
    small_scan: tuple[SimulationSpec, list[Path]], tmp_path: Path
) -> None:
    spec, recordings = small_scan
    for run in replay(recordings, spec.config(), workers=2, rate_hz=150):
        token = run.reducer.control.token
        url = f"{run.reducer.control.url}/streamtomo/parameters"
        # Before the first frame the detector is unknown: the memory budget still holds.
        early = _post(f"{url}/slice_size", "8192", token)
        assert early.status_code == 400 and "budget" in early.json()["message"], early.text
        run.go()
        _wait_projections(run, spec.angles // 4)
        before = {name: _stored(run, name) for name in ("slice_size", "slice_rows", "center")}
        refused = [
            ("slice_size", "99999999999999999999", "at most"),
            ("slice_size", 99999999999999999999, "at most"),  # a JSON number as well as a string
            ("slice_size", str(4 * spec.cols), "detector width"),  # far above the bound for this detector
            ("slice_size", "-3", ">= 0"),
            ("slice_rows", "7", "outside"),
            ("center", "1e400", "center"),
            ("center", "nan", "center"),
            ("center", "1e6", "outside the detector"),
        ]
        for name, value, reason in refused:
            answer = _post(f"{url}/{name}", value, token)
            assert answer.status_code == 400, (name, value, answer.status_code, answer.text)
            assert reason in answer.json()["message"], (name, value, answer.json())
        after = {name: _stored(run, name) for name in ("slice_size", "slice_rows", "center")}
        assert after == before, "a refused value reached the shared parameters (and so the workers)"
        run.wait(timeout=120)
        run.reducer.timer()
        status = run.reducer.scan.status()
        assert status["state"] == "finished"
        assert status["projections"] == spec.angles and status["frames_lost"] == 0
        path = write_nexus(run.reducer.domain, tmp_path / "scan.nxs")
        with h5py.File(path, "r") as f:
            assert f["/entry/reconstruction/data"].shape[1:] == (spec.cols, spec.cols)


class HeldRebuilds:
    """Holds each rebuild of the live products (``LiveScan.reconfigure``) until released.

    The reducer's timer applies a stored change by calling it under the reducer's lock;
    while it waits here, that rebuild is provably in progress, however fast the machine.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        rebuild = LiveScan.reconfigure

        def held(scan: LiveScan, config: PipelineConfig) -> None:
            self.started.set()
            try:
                self.release.wait(120)  # bounded: a test that fails still ends
                rebuild(scan, config)
            finally:
                self.finished.set()

        monkeypatch.setattr(LiveScan, "reconfigure", held)

    def next(self) -> None:
        """Let the held rebuild finish, and hold the next one."""
        self.release.set()
        assert self.finished.wait(60), "the released rebuild did not finish"
        for event in (self.started, self.release, self.finished):
            event.clear()


def test_a_rebuild_does_not_delay_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The request stores the value; the rebuild runs later in the reducer, not in the server.

    Each change's rebuild is held in progress while ``/about`` is read: a read (or a
    POST) that waited for the rebuild would time out before the test lets it go.
    """
    spec = SimulationSpec(rows=16, cols=192, angles=360, seed=5)
    recordings = record(ScanSimulator(spec).frames(), tmp_path / "scan", spec.config())
    rebuilds = HeldRebuilds(monkeypatch)
    for run in replay(recordings, spec.config(), workers=2, rate_hz=400):
        token = run.reducer.control.token
        url = f"{run.reducer.control.url}/streamtomo/parameters"
        about = f"{run.reducer.endpoint}/about"
        run.go()
        _wait_projections(run, spec.angles // 2, timeout=60)
        changes = [("slice_size", str(2 * spec.cols)), ("slice_rows", "0:16"), ("filter", "hann"), ("slice_size", "0")]
        try:
            for name, value in changes:
                # Answered before the rebuild starts: a POST that rebuilt would wait for the gate.
                answer = _post(f"{url}/{name}", value, token)
                assert answer.status_code == 202, answer.text
                assert rebuilds.started.wait(60), f"no rebuild after {name}={value}"
                for _ in range(5):
                    # A timeout (requests raises) is the failure: the read waited for the rebuild.
                    assert requests.get(about, timeout=10).status_code == 200
                assert not rebuilds.finished.is_set(), "the rebuild was not in progress during the reads"
                rebuilds.next()
        finally:
            rebuilds.release.set()  # the scan must be able to end, whatever failed
        run.wait(timeout=180)
        run.reducer.timer()
        assert run.reducer.scan.config.filter == "hann" and run.reducer.scan.config.slice_rows == "0:16"
