"""What ``streamtomo replay`` tells a scientist and a script at the end of a scan: the exit
status, the summary line and the log, run as a user runs it (the real CLI, a subprocess).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

CLI = str(Path(sys.executable).with_name("streamtomo"))


def _simulate(folder: Path, angles: int = 24) -> tuple[list[str], Path]:
    subprocess.run(
        [CLI, "simulate", "--out", str(folder), "--rows", "4", "--cols", "32", "--angles", str(angles)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return sorted(str(p) for p in folder.glob("*.cbors")), folder / "parameters.json"


def _with(parameters: Path, changes: dict[str, str]) -> Path:
    entries = json.loads(parameters.read_text())
    for entry in entries:
        if entry["name"] in changes:
            entry["data"] = changes[entry["name"]]
    path = parameters.with_name("changed.json")
    path.write_text(json.dumps(entries))
    return path


def _replay(recordings: list[str], parameters: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "replay", "-f", *recordings, "-p", str(parameters), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _no_errors(output: str) -> None:
    assert [line for line in output.splitlines() if " ERROR " in line or "Traceback" in line] == []


@pytest.mark.slow
def test_a_scan_whose_frames_are_all_rejected_fails_with_its_reason(tmp_path: Path) -> None:
    recordings, parameters = _simulate(tmp_path / "scan")
    # kind_rule 'header' with a key no image header has: every frame is rejected.
    changed = _with(parameters, {"kind_rule": "header", "kind_header_key": "no_such_key"})
    done = _replay(recordings, changed, tmp_path / "out.nxs")
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "scan failed: no projection was reduced: 44 frames received, rejected: 44 unknown_kind" in done.stderr
    _no_errors(output)
    summary = next(line for line in done.stdout.splitlines() if line.startswith("summary:"))
    # No latency figure for a scan that produced no slices (it printed 1.8e12 ms).
    assert "last frame to final slices" not in summary
    assert "0 projections, 44 rejected: 44 unknown_kind" in summary
    assert output.count("scan failed: no projection was reduced") == 2  # the log's WARNING, stderr's line
    with h5py.File(tmp_path / "out.nxs", "r") as f:
        assert f["/entry/status/state"][()] == b"failed"
        assert f["/entry/status/reason"][()].startswith(b"no projection was reduced")


@pytest.mark.slow
def test_a_good_scan_exits_zero_and_reports_its_latency(tmp_path: Path) -> None:
    recordings, parameters = _simulate(tmp_path / "scan")
    done = _replay(recordings, parameters, tmp_path / "out.nxs")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    _no_errors(output)
    summary = next(line for line in done.stdout.splitlines() if line.startswith("summary:"))
    assert summary.startswith("summary: 44 frames (24 projections, 0 rejected) in ")
    assert "; last frame to final slices " in summary


@pytest.mark.slow
def test_a_limited_angle_warning_is_said_once_in_words(tmp_path: Path) -> None:
    recordings, parameters = _simulate(tmp_path / "scan", angles=36)
    # The recorded angles cover 0..180; keeping only 0..60 leaves a 120-degree wedge.
    # center 'auto' and the volume both reconstruct: the warning used to come out
    # once per call site, each time with a Python source line.
    changed = _with(parameters, {"angle_range": "60", "n_projections": "12", "center": "auto"})
    done = _replay(recordings, changed, tmp_path / "out.nxs")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    _no_errors(output)
    assert output.count("angles cover only") == 1, output
    assert "warnings.warn" not in output and "UserWarning" not in output and "CoverageWarning" not in output
