"""``streamtomo demo`` as a person meets it: on a terminal it is paced, prints the
viewer first and serves until Enter; without one (CI, scripts) it ends by itself.

The terminal is a real pseudo-terminal (``pty``) holding the real CLI's stdin and
stdout, so the CLI's own TTY check decides, as it does for a user.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SMALL = ["--rows", "8", "--cols", "32", "--angles", "40", "-w", "1", "--out", "demo.nxs"]


class Terminal:
    """The CLI on a pseudo-terminal; ``output`` is all it has written so far."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.master, slave = pty.openpty()
        # Its own temporary folder: what it leaves behind is seen (scratch).
        self.scratch = cwd / "tmp"
        self.scratch.mkdir()
        env = {**os.environ, "TMPDIR": str(self.scratch)}
        self.proc = subprocess.Popen(argv, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, close_fds=True, env=env)
        os.close(slave)
        self.output = ""

    def read_until(self, text: str, guard_s: float = 240.0) -> str:
        # The guard only keeps a broken CLI from hanging the suite; nothing is timed.
        deadline = time.monotonic() + guard_s
        while text not in self.output:
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output}"
            readable, _, _ = select.select([self.master], [], [], 0.5)
            if readable:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    assert text in self.output, f"the CLI ended without {text!r}:\n{self.output}"
                self.output += chunk.decode(errors="replace").replace("\r\n", "\n")
        return self.output

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def drain(self) -> None:
        while True:
            readable, _, _ = select.select([self.master], [], [], 0.2)
            if not readable:
                return
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk.decode(errors="replace").replace("\r\n", "\n")

    def close(self) -> None:
        """As a person leaves it: Ctrl-C (a kill left its temporary folders, the control
        token's among them, in the machine's /tmp at every run of the suite)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.close(self.master)


def _value(output: str, prefix: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(prefix)).split(prefix, 1)[1].split()[0]


def test_on_a_terminal_the_demo_is_paced_and_serves_until_enter(tmp_path: Path) -> None:
    h5pyd = pytest.importorskip("h5pyd")
    term = Terminal([sys.executable, "-m", "streamtomo.app.cli", "demo", "--pace", "3", *SMALL], tmp_path)
    try:
        out = term.read_until("press Enter (or Ctrl-C) to stop")
        lines = [line for line in out.splitlines() if line.strip()]
        # The viewer is the first thing it says; then the scan, paced; then it waits.
        assert lines[0].startswith("viewer: "), out
        order = ["viewer: ", "endpoint: ", "pacing the scan to about 3 s", "summary: ", "serving; press Enter"]
        positions = [out.index(marker) for marker in order]
        assert positions == sorted(positions), out
        assert " INFO " not in out  # log lines would break up the progress bar
        # dranspose's own "press ctrl-C to stop" landed in the progress bar's line.
        assert "press ctrl-C" not in out
        # Still serving: the final slices are there to look at.
        endpoint, domain = _value(out, "endpoint: "), _value(out, "domain: ")
        with h5pyd.File(domain, "r", endpoint=endpoint) as f:
            assert f["/entry/status/state"][()] in (b"finished", "finished")
            slices = f["/entry/reconstruction/data"][()]
        assert slices.shape == (5, 32, 32) and np.abs(slices).max() > 0
        if not _value(out, "viewer: ").startswith("not"):
            import urllib.request

            with urllib.request.urlopen(_value(out, "viewer: "), timeout=10) as page:
                assert page.status == 200
        assert term.proc.poll() is None  # waiting for Enter, not ended
        term.type("\n")
        assert term.proc.wait(timeout=60) == 0
        term.drain()
        assert "stopped" in term.output.split("press Enter (or Ctrl-C) to stop", 1)[1]
    finally:
        term.close()
    assert list(term.scratch.iterdir()) == []
    assert (tmp_path / "demo.nxs").exists()


def test_on_a_terminal_the_default_pace_is_for_watching(tmp_path: Path) -> None:
    term = Terminal([sys.executable, "-m", "streamtomo.app.cli", "demo", *SMALL], tmp_path)
    try:
        out = term.read_until("frames/s): open the viewer to watch it")
        assert "pacing the scan to about 20 s" in out
    finally:
        term.close()  # Ctrl-C, not waited for: the pace itself is the other test's
    assert term.proc.returncode == 130, term.output
    assert list(term.scratch.iterdir()) == []  # recordings, parameters, the control token: all removed


def test_without_a_terminal_the_demo_runs_through_and_ends(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamtomo.app.cli", "demo", *SMALL],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0].startswith("viewer: ")
    assert "summary: " in done.stdout
    for interactive in ("pacing the scan", "press Enter", "serving;"):
        assert interactive not in done.stdout
