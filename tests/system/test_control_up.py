"""`streamtomo up`: a refused parameter change mid-scan changes nothing and loses nothing.

The real distributed deployment (Redis, controller, ingesters, a worker, the reducer
as processes on 127.0.0.1) plays a simulated scan; halfway through, values that once
killed every later frame in the worker are posted to the reducer's control API.
"""

from __future__ import annotations

import json
import shutil
import stat
import time
from pathlib import Path

import pytest
import requests

from streamtomo.app.beamline_events import frame_events
from streamtomo.app.deployment import LocalDeployment
from streamtomo.app.play import play
from tests.support.distributed_fixtures import ended_domain, simulated_scan, status

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("redis-server") is None, reason="redis-server not installed (apt-get install -y redis-server)"
    ),
]


def test_refused_values_mid_scan_change_nothing_and_the_scan_completes(tmp_path: Path) -> None:
    spec, frames = simulated_scan()
    config = spec.config()
    with LocalDeployment(workers=1, run_dir=tmp_path / "deployment") as deployment:
        settings = deployment.reducer_environment
        token_file = Path(settings.control_token_file)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        url = f"http://127.0.0.1:{settings.control_port}/streamtomo/parameters"
        live = f"{deployment.state.live_endpoint}/streamtomo/parameters/slice_size"
        answers: list[tuple[str, int, str]] = []

        def attempt(index: int, sent: int) -> None:
            if sent != len(frames) // 2:
                return
            # The bound against the detector needs the detector: wait for the
            # reducer's first projection (numba compiles the worker's kernels first).
            deadline = time.monotonic() + 60
            while int(status(deployment.state.live_endpoint, config.domain)["projections"]) == 0:
                assert time.monotonic() < deadline, "the reducer got no projection"
                time.sleep(0.1)
            auth = {"Authorization": f"Bearer {token}"}
            for value in ("99999999999999999999", str(4 * spec.cols)):
                rsp = requests.post(f"{url}/slice_size", json={"value": value}, headers=auth, timeout=10)
                answers.append((value, rsp.status_code, rsp.text))
            answers.append(
                ("no token", requests.post(f"{url}/slice_size", json={"value": "64"}, timeout=10).status_code, "")
            )
            answers.append(("live port", requests.post(live, data="99999999999999999999", timeout=10).status_code, ""))

        result = play(deployment.state, frame_events(frames, config), config, on_frame_sent=attempt)
        assert not result.ended_by_stop
        assert [(value, status) for value, status, _ in answers] == [
            ("99999999999999999999", 400),
            (str(4 * spec.cols), 400),
            ("no token", 401),
            ("live port", 403),
        ], answers
        assert "at most" in answers[0][2] and "detector width" in answers[1][2]

        domain = ended_domain(deployment.state.live_endpoint, config.domain)
        assert domain["/entry/status/state"] == "finished"
        assert int(domain["/entry/reconstruction/n_projections"]) == spec.angles
        assert int(domain["/entry/status/frames_lost"]) == 0
        assert json.loads(domain["/entry/status/rejected"]) == {}
        assert json.loads(domain["/entry/reconstruction/parameters"])["slice_size"] == config.slice_size
        assert domain["/entry/reconstruction/data"].shape[1:] == (spec.cols, spec.cols)
        worker_logs = "".join(p.read_text() for p in deployment.log_dir.glob("*worker*.log"))
        assert "custom worker failed" not in worker_logs and "Traceback" not in worker_logs
