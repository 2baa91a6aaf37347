"""``streamtomo up`` and ``streamtomo play`` as subprocesses, as a person runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def cli_env() -> dict[str, str]:
    """This checkout first on the path, as for the deployment's own services."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class UpProcess:
    """``streamtomo up`` in its own run directory; :meth:`wait_ready` until it serves."""

    def __init__(self, run_dir: Path, *args: str, cwd: Path = ROOT) -> None:
        """``run_dir`` relative: given so to ``up``, which runs in ``cwd``."""
        self.run_dir = run_dir
        (cwd / run_dir).mkdir(parents=True, exist_ok=True)
        self.out = cwd / run_dir / "up.out"
        self.state_path = cwd / run_dir / "state.json"
        argv = [sys.executable, "-m", "streamtomo.app.cli", "up", "--run-dir", str(run_dir)]
        argv += ["--state", str(self.state_path), *args]
        with self.out.open("wb") as out:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=cli_env(), cwd=cwd)

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while "ready;" not in self.output():
            assert self.popen.poll() is None, f"up exited with {self.popen.returncode}:\n{self.output()}"
            assert time.monotonic() < deadline, f"up not ready within {timeout:.0f} s:\n{self.output()}"
            time.sleep(0.2)
        state: dict[str, Any] = json.loads(self.state_path.read_text())
        return state

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"up did not exit within {timeout:.0f} s:\n{self.output()}") from None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            self.wait_exit()


def play_process(state_path: Path, out: Path, *args: str) -> subprocess.Popen[bytes]:
    """``streamtomo play --simulate`` against the deployment in ``state_path``."""
    argv = [sys.executable, "-m", "streamtomo.app.cli", "play", "--simulate", "--state", str(state_path), *args]
    with out.open("wb") as f:
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=cli_env(), cwd=ROOT)


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; only its parent has not reaped it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"
