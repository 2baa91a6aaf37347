"""``streamtomo up`` and the state file ``play`` finds a deployment by."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.up_process import ROOT, UpProcess, cli_env


def _up(*argv: str) -> subprocess.CompletedProcess[str]:
    """``streamtomo up ARGV`` to its end, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "streamtomo.app.cli", "up", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
        cwd=ROOT,
        check=False,
    )


def test_a_second_up_on_the_same_state_file_is_refused_and_a_stale_one_is_replaced(tmp_path: Path) -> None:
    """A second `up` overwrote the first one's addresses: `play` then went to it, and
    the first deployment could no longer be found. A file left by one that crashed
    (its services gone) is no deployment, and `up` takes its place."""
    state_path = tmp_path / "up" / "state.json"
    state_path.parent.mkdir(parents=True)
    stale = {"controller_url": "http://127.0.0.1:1", "redis_url": "", "live_endpoint": "", "domain": ""}
    stale |= {"detector_upstream": "", "angle_upstream": "", "run_dir": "/gone", "pids": {"controller": 2**22 + 1}}
    state_path.write_text(json.dumps(stale))
    up = UpProcess(tmp_path / "up", "--no-record")  # its --state is tmp_path/up/state.json
    try:
        state = up.wait_ready()
        assert state["run_dir"] == str(tmp_path / "up")  # the stale file replaced
        second = _up("--run-dir", str(tmp_path / "second"), "--state", str(state_path), "--no-record")
        assert second.returncode == 2, second.stdout + second.stderr
        assert "a deployment is running" in second.stderr and str(tmp_path / "up") in second.stderr, second.stderr
        assert json.loads(state_path.read_text()) == state  # the first one's addresses kept
        assert up.popen.poll() is None
    finally:
        up.stop()
    assert not state_path.exists()  # the first one removed its own file on stop


def test_a_relative_run_dir_works(tmp_path: Path) -> None:
    """redis runs in the run dir and was also given it as --dir: `up --run-dir dep/run`
    looked for dep/run/dep/run and never got ready ("redis not ready within 60 s")."""
    up = UpProcess(Path("dep") / "run", "--no-record", cwd=tmp_path)
    try:
        state = up.wait_ready()
        assert state["run_dir"] == str(tmp_path / "dep" / "run")
    finally:
        up.stop()


def test_a_second_up_in_the_same_run_dir_is_refused_before_it_starts_anything(tmp_path: Path) -> None:
    """Two ups on one --run-dir wrote into the same logs, results and recordings, and
    the second's reducer wrote its control token over the first's."""
    up = UpProcess(tmp_path / "up", "--no-record")
    try:
        state = up.wait_ready()
        token = tmp_path / "up" / "control.token"
        assert token.exists()
        logs_before = sorted(p.name for p in (tmp_path / "up" / "logs").iterdir())
        second = _up("--run-dir", str(tmp_path / "up"), "--state", str(tmp_path / "other.json"), "--no-record")
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"the run directory {tmp_path / 'up'} is in use by another deployment (pid {up.popen.pid})" in (
            second.stderr
        ), second.stderr
        assert "started" not in second.stdout + second.stderr  # no service was started
        assert token.exists() and up.popen.poll() is None
        assert sorted(p.name for p in (tmp_path / "up" / "logs").iterdir()) == logs_before
        assert json.loads(up.state_path.read_text()) == state
    finally:
        up.stop()
    # Let go when up stops: the directory is free for the next one.
    again = UpProcess(tmp_path / "up", "--no-record")
    try:
        again.wait_ready()
    finally:
        again.stop()


def test_a_state_path_that_is_a_directory_is_refused_at_once(tmp_path: Path) -> None:
    """It was found only after every service had started, which up then stopped again,
    leaving DIR.tmp behind."""
    folder = tmp_path / "state"
    folder.mkdir()
    result = _up("--run-dir", str(tmp_path / "run"), "--state", str(folder), "--no-record")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"--state {folder} is a directory" in result.stderr, result.stderr
    assert not (tmp_path / "state.tmp").exists() and not (tmp_path / "run" / "logs").exists()
