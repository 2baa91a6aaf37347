"""A deployment whose parts die or are stopped: Redis, the reducer or the beamline
sender killed mid-scan, and ``up`` stopped with Ctrl-C or SIGTERM.

Everything is real: ``streamtomo up`` and ``streamtomo play`` as subprocesses, or a
:class:`LocalDeployment` with its Redis, controller, ingesters, workers and reducer
as processes on 127.0.0.1. Scans are small (32x64 frames, 60 projections).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import pytest

from streamtomo.app.processes import wait_for
from streamtomo.controller_client import ControllerClient
from tests.support.distributed_fixtures import status
from tests.support.up_process import UpProcess, pid_alive, play_process

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("redis-server") is None, reason="redis-server not installed (apt-get install -y redis-server)"
    ),
]

SCAN = ("--rows", "32", "--cols", "64", "--angles", "60", "--no-record")  # 80 frames with darks and flats
DOMAIN = "/streamtomo/live.h5"
# What losing Redis makes dranspose, asyncio and uvicorn log at ERROR in every service
# (seen in a run of the Redis test; all of it follows the kill).
REDIS_GONE: tuple[str, ...] = (
    "Connection refused",
    "ConnectionError",
    "Exception in callback done_callback(",
    "Exception in default exception handler",
    "Task exception was never retrieved",
    "Task was destroyed but it is pending!",
    "Exception in ASGI application",
    "uvicorn.error: Traceback",
)


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


# -- a part killed mid-scan -------------------------------------------------------------------


def service_errors(run_dir: Path, allow: tuple[str, ...] = ()) -> list[str]:
    """ERROR/CRITICAL lines in the service logs, minus those containing ``allow``."""
    found = []
    for log in sorted((run_dir / "logs").glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if (" ERROR " in line or " CRITICAL " in line) and not any(a in line for a in allow):
                found.append(f"{log.name}: {line}")
    return found


def wait_state(endpoint: str, want: str, timeout: float = 90.0) -> dict[str, object]:
    """Until the live domain's ``/entry/status/state`` is ``want``; its status then."""
    deadline = time.monotonic() + timeout
    now: dict[str, object] = {}
    while time.monotonic() < deadline:
        try:
            now = status(endpoint, DOMAIN)
            if now["state"] == want:
                return now
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"state not {want!r} within {timeout:.0f} s: {now}")


def wait_projections(endpoint: str, at_least: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if int(status(endpoint, DOMAIN)["projections"]) >= at_least:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"fewer than {at_least} projections reduced within {timeout:.0f} s"
        time.sleep(0.2)


def wait_final_files(results: Path, count: int, timeout: float = 60.0) -> list[Path]:
    """The scans' final files once there are ``count``: the reducer writes each after the
    scan ended, under a temporary name, and renames it into place when complete."""
    deadline = time.monotonic() + timeout
    while True:
        files = sorted(results.glob("scan-*.nxs"))
        if len(files) >= count:
            return files
        assert time.monotonic() < deadline, f"{len(files)} of {count} final files in {results} after {timeout:.0f} s"
        time.sleep(0.1)


def final_status(path: Path) -> dict[str, str]:
    with h5py.File(path, "r") as f:
        return {k: _text(f[f"/entry/status/{k}"][()]) for k in ("state", "reason", "frames_received", "frames_lost")}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def play_to_end(up: UpProcess, out: Path) -> None:
    player = play_process(up.state_path, out, *SCAN)
    assert player.wait(180) == 0, out.read_text()


def test_sender_killed_mid_scan_ends_the_scan_stopped_and_keeps_what_was_reduced(tmp_path: Path) -> None:
    up = UpProcess(tmp_path / "up", "--no-record", "--stream-timeout", "5")
    try:
        state = up.wait_ready()
        # 2 frames/s: 40 s to send the 80 frames, so the sender is still sending when the
        # reducer has its 10th projection even on a busy machine (at 5/s a reducer 11 s
        # behind saw the whole scan arrive and finish before the kill).
        player = play_process(up.state_path, tmp_path / "play.out", *SCAN, "--rate", "2")
        # Projections reduced: the workers' first-frame compilation (seconds) is behind us.
        wait_projections(state["live_endpoint"], 10)
        assert player.poll() is None, "the sender finished before it could be killed"
        player.kill()  # the beamline's sender dies: no more frames, no end of series
        player.wait()
        stopped = wait_state(state["live_endpoint"], "stopped")
        reason = str(stopped["reason"])
        assert "the streams stopped: no event for 5 s" in reason and "of 80 frames received" in reason, reason
        assert 0 < int(str(stopped["frames_received"])) < 80
        (final,) = wait_final_files(up.run_dir / "results", 1)
        assert final_status(final)["state"] == "stopped"

        # The next scan is not refused, and the stopped one stays as it was.
        play_to_end(up, tmp_path / "play-2.out")
        assert wait_state(state["live_endpoint"], "finished")["frames_received"] == 80
        assert final_status(final)["state"] == "stopped"
        assert len(wait_final_files(up.run_dir / "results", 2)) == 2
        assert up.popen.poll() is None
    finally:
        up.stop()
    assert service_errors(up.run_dir) == []


def test_reducer_killed_mid_scan_is_replaced_and_the_scan_ends_failed(tmp_path: Path) -> None:
    up = UpProcess(tmp_path / "up", "--no-record")
    try:
        state = up.wait_ready()
        # 5 frames/s: the scan takes 16 s, so the reducer dies mid-scan even on a busy machine.
        player = play_process(up.state_path, tmp_path / "play.out", *SCAN, "--rate", "5")
        try:
            wait_events(state["controller_url"], 30)
            assert player.poll() is None, "the scan ended before the reducer could be killed"
            os.killpg(state["pids"]["reducer"], signal.SIGKILL)
            failed = wait_state(state["live_endpoint"], "failed")
            assert "the reducer died during this scan" in str(failed["reason"])
            # The scan ended, failed, and play says so (exit 3, as demo and replay).
            assert player.wait(120) == 3, (tmp_path / "play.out").read_text()
            assert "scan failed: the reducer died during this scan" in (tmp_path / "play.out").read_text()
        finally:
            player.kill()
            player.wait()
        output = up.output()
        assert "reducer exited (status -9)" in output and "reducer.log" in output, output
        (final,) = wait_final_files(up.run_dir / "results", 1)
        ended = final_status(final)
        assert ended["state"] == "failed"
        # What died with the first reducer is lost to this scan, and said so (it said 0).
        received, lost = int(str(ended["frames_received"])), int(str(ended["frames_lost"]))
        assert lost > 0 and received + lost == 80, ended

        play_to_end(up, tmp_path / "play-2.out")  # not refused
        assert wait_state(state["live_endpoint"], "finished")["frames_received"] == 80
        assert up.popen.poll() is None
    finally:
        up.stop()
    assert service_errors(up.run_dir) == []


def test_a_worker_killed_mid_scan_is_replaced_once_the_scan_has_ended(tmp_path: Path) -> None:
    """The new worker joined the running scan, had never seen its headers (the PandA's
    names its values) and refused every frame it was given: 86 of 300 as
    pcap_header_missing in a helper's probe, 'finished', exit 0."""
    up = UpProcess(tmp_path / "up", "--no-record", "-w", "2")
    try:
        state = up.wait_ready()
        # 10 frames/s: 8 s of scan, so the worker dies mid-scan even on a busy machine.
        player = play_process(up.state_path, tmp_path / "play.out", *SCAN, "--rate", "10")
        try:
            wait_events(state["controller_url"], 20)
            assert player.poll() is None, "the scan ended before the worker could be killed"
            os.killpg(state["pids"]["worker-2"], signal.SIGKILL)
            assert player.wait(180) == 0, (tmp_path / "play.out").read_text()
        finally:
            player.kill()
            player.wait()
        ended = wait_state(state["live_endpoint"], "finished")
        assert "pcap_header_missing" not in str(ended["rejected"]), ended
        assert "a new worker starts when the scan has ended" in up.output(), up.output()
        # When the controller calls the scan finished, or after REPLACEMENT_WAIT_MAX_S (120 s).
        wait_for("the new worker", lambda: "started in place of worker-2" in up.output() or None, 180)
        play_to_end(up, tmp_path / "play-2.out")  # the next scan, with the new worker
        again = wait_state(state["live_endpoint"], "finished")
        assert again["frames_received"] == 80 and json.loads(str(again["rejected"])) == {}, again
    finally:
        up.stop()
    assert service_errors(up.run_dir) == []


def test_a_reducer_killed_between_scans_is_replaced_and_fails_no_scan(tmp_path: Path) -> None:
    """Killed before any scan, its successor marked the controller's empty startup
    mapping failed and wrote a final file for it; killed after a scan had finished, it
    said 'failed, the reducer died during this scan' over that scan."""
    up = UpProcess(tmp_path / "up", "--no-record")
    try:
        state = up.wait_ready()
        os.killpg(state["pids"]["reducer"], signal.SIGKILL)
        wait_for("the new reducer", lambda: "new reducer ready" in up.output() or None, 120)
        play_to_end(up, tmp_path / "play-1.out")
        assert wait_state(state["live_endpoint"], "finished")["frames_received"] == 80
        (final,) = wait_final_files(up.run_dir / "results", 1)  # the scan's, and none for the startup
        assert final_status(final)["state"] == "finished"

        replaced = json.loads(up.state_path.read_text())["pids"]["reducer"]  # the state file follows replacements
        assert replaced != state["pids"]["reducer"] and pid_alive(replaced)
        os.killpg(replaced, signal.SIGKILL)  # the scan had finished
        wait_for("the second new reducer", lambda: up.output().count("new reducer ready") == 2 or None, 120)
        assert "ended as failed" not in up.output(), up.output()
        assert len(list((up.run_dir / "results").glob("*.nxs"))) == 1
        play_to_end(up, tmp_path / "play-2.out")  # not refused
        assert wait_state(state["live_endpoint"], "finished")["frames_received"] == 80
    finally:
        up.stop()
    assert service_errors(up.run_dir) == []


def killed_mid_scan(
    tmp_path: Path, kill: Callable[[dict[str, Any]], None], *up_args: str, rate: str, after_events: int
) -> tuple[UpProcess, dict[str, Any]]:
    """up with a scan streaming at ``rate`` frames/s; once ``after_events`` events are
    done, ``kill(state)``: up must stop everything and exit 3. Returns up and its state."""
    up = UpProcess(tmp_path / "up", "--no-record", *up_args)
    player = None
    try:
        state = up.wait_ready()
        player = play_process(up.state_path, tmp_path / "play.out", *SCAN, "--rate", rate)
        wait_events(state["controller_url"], after_events)
        kill(state)
        assert up.wait_exit(90) == 3, up.output()
    finally:
        if player is not None:
            player.kill()
            player.wait()
        up.stop()
    return up, state


def test_redis_killed_mid_scan_stops_up_with_an_error_naming_it(tmp_path: Path) -> None:
    up, state = killed_mid_scan(
        tmp_path, lambda state: os.kill(state["pids"]["redis"], signal.SIGKILL), rate="20", after_events=30
    )
    output = up.output()
    assert "streamtomo: error: redis exited (status -9)" in output and "redis.log" in output, output
    assert "did not stop" not in output, output
    for name, pid in state["pids"].items():
        assert not pid_alive(pid), f"{name} (pid {pid}) outlived up"
    # Not asserted: a final file. The reducer's dranspose side fails with Redis, and the
    # SIGTERM from up ends it before our close() writes the file (see the report).
    # Every service loses Redis: dranspose logs that at ERROR; nothing else may be.
    assert service_errors(up.run_dir, allow=REDIS_GONE) == []


@contextlib.contextmanager
def streaming(up: UpProcess, state: dict[str, Any], out: Path) -> Iterator[subprocess.Popen[bytes]]:
    """play streaming a scan at 4 frames/s (20 s for its 80 frames), handed over once 10
    projections are reduced (the workers' first-frame compilation behind us) and still
    sending; killed on the way out, whatever the test did with it."""
    player = play_process(up.state_path, out, *SCAN, "--rate", "4")
    try:
        wait_projections(state["live_endpoint"], 10)
        assert player.poll() is None, "the scan ended before the test could act on it"
        yield player
    finally:
        player.kill()
        player.wait()


def test_play_stopped_with_ctrl_c_ends_its_scan_at_once_and_keeps_what_was_reduced(tmp_path: Path) -> None:
    """Ctrl-C left the scan open until the stream timeout (30 s by default): a play
    within it replaced the scan, which got no final file. ``play`` now ends it through
    the controller before it exits."""
    up = UpProcess(tmp_path / "up", "--no-record", "--stream-timeout", "600")
    try:
        state = up.wait_ready()
        with streaming(up, state, tmp_path / "play.out") as player:
            player.send_signal(signal.SIGINT)
            assert player.wait(60) == 128 + signal.SIGINT, (tmp_path / "play.out").read_text()
        output = (tmp_path / "play.out").read_text()
        assert "interrupted: the scan was ended through the controller" in output, output
        # Well before the stream timeout (600 s): the scan ended with what was reduced.
        ended = wait_state(state["live_endpoint"], "finished", timeout=60)
        assert 10 <= int(str(ended["frames_received"])) < 80 and int(str(ended["frames_lost"])) > 0, ended
        (final,) = wait_final_files(up.run_dir / "results", 1)
        assert final_status(final)["state"] == "finished"
        play_to_end(up, tmp_path / "play-2.out")
        assert len(wait_final_files(up.run_dir / "results", 2)) == 2
    finally:
        up.stop()
    assert service_errors(up.run_dir) == []


def test_a_scan_replaced_before_its_end_ends_stopped_with_its_final_file(tmp_path: Path) -> None:
    """A sender killed before it could end its scan, and the next scan posted at once
    (within the stream timeout): dranspose never calls the replaced scan's finish, and it
    got no final file; its live domain was simply replaced."""
    up = UpProcess(tmp_path / "up", "--no-record", "--stream-timeout", "600")
    try:
        state = up.wait_ready()
        with streaming(up, state, tmp_path / "play.out") as player:
            player.kill()  # no Ctrl-C: nothing ends the scan
            player.wait()
        play_to_end(up, tmp_path / "play-2.out")
        assert wait_state(state["live_endpoint"], "finished")["frames_received"] == 80
        first, second = sorted(wait_final_files(up.run_dir / "results", 2), key=lambda p: p.stat().st_mtime)
        replaced = final_status(first)
        assert replaced["state"] == "stopped", replaced
        assert "was posted before this one ended" in replaced["reason"], replaced
        assert 10 <= int(replaced["frames_received"]) < 80, replaced
        assert final_status(second)["state"] == "finished"
    finally:
        up.stop()
    assert service_errors(up.run_dir) == []


def test_play_names_the_final_file_and_exits_1_when_it_could_not_be_written(tmp_path: Path) -> None:
    """A results folder gone (a file in its place, a mount lost): the reducer logged a
    WARNING, and play said nothing of the file, exit 0."""
    up = UpProcess(tmp_path / "up", "--no-record")
    try:
        up.wait_ready()
        results = up.run_dir / "results"
        play_to_end(up, tmp_path / "play-1.out")
        (written,) = wait_final_files(results, 1)
        assert f"final file: {written}\n" in (tmp_path / "play-1.out").read_text()

        shutil.rmtree(results)
        results.write_text("not a folder")
        player = play_process(up.state_path, tmp_path / "play-2.out", *SCAN)
        assert player.wait(180) == 1, (tmp_path / "play-2.out").read_text()
        output = (tmp_path / "play-2.out").read_text()
        assert "state: finished" in output and "NOT WRITTEN" in output, output
        assert "streamtomo: error: the scan's final file was not written:" in output, output
        assert f"File exists: '{results}'" in output, output  # the folder could not be made: a file is there
    finally:
        up.stop()
    assert service_errors(up.run_dir) == []


def test_play_says_the_deployment_stopped_when_up_stops_under_its_scan(tmp_path: Path) -> None:
    """It waited 30 s on its next frame and then blamed the detector ingester ("took no
    frame for 30 s, see its log") for a deployment that had stopped."""
    up = UpProcess(tmp_path / "up", "--no-record")
    try:
        state = up.wait_ready()
        with streaming(up, state, tmp_path / "play.out") as player:
            up.popen.send_signal(signal.SIGINT)
            assert up.wait_exit() == 0, up.output()
            assert player.wait(120) == 1, (tmp_path / "play.out").read_text()
    finally:
        up.stop()
    output = (tmp_path / "play.out").read_text()
    # Its controller gone or, if play looked while up was stopping, its ingesters.
    assert "streamtomo: error: the deployment stopped under the scan: its " in output, output
    assert "see the output of `streamtomo up`" in output, output
    assert "took no frame" not in output, output


@pytest.mark.parametrize(
    ("service", "log_says"),
    [
        # Its dranspose registration loop died on redis-py's 5 s read timeout, its key
        # expired, and the controller answered the next scan with a 500 (play exit 1);
        # up saw nothing.
        ("reducer", "got no answer in time"),
        # It reconnected to the ingesters under its name while its old connections were
        # still open there, and the ingesters kept routing to the old ones: the scan's
        # first event (broadcast) never reached it, nothing completed, and play's stall
        # stop ended the scan with nothing reduced (in 1 of 3 runs on 2 cores: the race is
        # between the old connection's close and the new one's greeting).
        ("worker-1", None),
    ],
)
def test_a_service_stopped_for_12_s_takes_the_next_scan_whole(
    tmp_path: Path, service: str, log_says: str | None
) -> None:
    """SIGSTOP for 12 s, then SIGCONT (a paused VM, a machine swapping), and a scan at
    once: past redis-py's socket timeout (5 s), a Redis key's life (10 s) and the
    ingesters' ping timeout."""
    up = UpProcess(tmp_path / "up", "--no-record")
    try:
        state = up.wait_ready()
        pid = state["pids"][service]
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(12)
        finally:
            os.kill(pid, signal.SIGCONT)
        play_to_end(up, tmp_path / "play.out")
        ended = wait_state(state["live_endpoint"], "finished")
        assert ended["frames_received"] == 80 and int(str(ended["frames_lost"])) == 0, ended
    finally:
        up.stop()
    assert service_errors(up.run_dir) == []
    if log_says is not None:
        assert log_says in (up.run_dir / "logs" / f"{service}.log").read_text()


def test_an_ingester_killed_mid_scan_stops_up_naming_it_without_killing_any_worker(tmp_path: Path) -> None:
    """up names the dead ingester, exits 3, and every worker stops on its own. (A worker
    whose close found a ping queued to the dead ingester waited for it forever, and up
    killed it after 10 s; whether one is queued depends on the ping's phase, so that is
    tested deterministically in tests/unit/app/test_zmq_loopback.py.)"""
    up, _ = killed_mid_scan(
        tmp_path,
        lambda state: os.killpg(state["pids"]["detector-ingester"], signal.SIGKILL),
        "-w",
        "2",
        rate="10",
        after_events=20,
    )
    output = up.output()
    assert "streamtomo: error: detector-ingester exited (status -9)" in output, output
    assert "did not stop" not in output, output
    for name in ("worker-1", "worker-2"):
        assert f"{name} stopped in" in output and f"{name} did not stop" not in output, output
