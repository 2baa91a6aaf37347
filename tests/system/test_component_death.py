"""A deployment whose parts die or are stopped: Redis, the reducer or the beamline
sender killed mid-scan, and ``up`` stopped with Ctrl-C or SIGTERM.

Everything is real: ``streamtomo up`` and ``streamtomo play`` as subprocesses, or a
:class:`LocalDeployment` with its Redis, controller, ingesters, workers and reducer
as processes on 127.0.0.1. Scans are small (32x64 frames, 60 projections).
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest

from streamtomo.controller_client import ControllerClient
from tests.support.up_process import UpProcess, pid_alive, play_process

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("redis-server") is None, reason="redis-server not installed (apt-get install -y redis-server)"
    ),
]

SCAN = ("--rows", "32", "--cols", "64", "--angles", "60", "--no-record")


def wait_events(controller_url: str, at_least: int, timeout: float = 90.0) -> None:
    """Until the controller counts ``at_least`` completed events of the current scan."""
    controller = ControllerClient(controller_url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if int(controller.progress(timeout=5)["completed_events"]) >= at_least:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"fewer than {at_least} events completed within {timeout:.0f} s"
        time.sleep(0.1)


@pytest.mark.parametrize("stops", [(signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM)])
def test_up_stopped_mid_scan_stops_every_service_without_sigkill(tmp_path: Path, stops: tuple[int, ...]) -> None:
    """Each stop comes while a scan streams (workers busy, numba compiling): every
    service exits on its own after SIGTERM, none is killed, and ``up`` exits 0."""
    for i, sig in enumerate(stops):
        up = UpProcess(tmp_path / f"up-{i}", "--no-record")
        try:
            state = up.wait_ready()
            player = play_process(up.state_path, tmp_path / f"play-{i}.out", *SCAN, "--rate", "20")
            try:
                wait_events(state["controller_url"], 10)
                up.popen.send_signal(sig)
                assert up.wait_exit() == 0, up.output()
            finally:
                player.kill()
                player.wait()
        finally:
            up.stop()
        output = up.output()
        assert "did not stop" not in output, output
        for name, pid in state["pids"].items():
            assert not pid_alive(pid), f"{name} (pid {pid}) outlived up"
            assert f"{name} stopped in" in output, output
