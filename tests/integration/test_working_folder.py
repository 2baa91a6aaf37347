"""Running from a folder that holds files named like common modules (a beamline's own
``reducer.py``, ``workers.py``, ``pipeline.py``, ...) changes nothing: dranspose puts
the working folder on ``sys.path`` and ``python -m`` puts it first, but everything
of ours lives in the ``streamtomo`` namespace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

SHADOWS = ("reducer", "workers", "pipeline", "app", "worker", "hsds_bridge")


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "beamline"
    folder.mkdir()
    for name in SHADOWS:
        (folder / f"{name}.py").write_text(f'raise ImportError("{name}.py of the working folder was imported")\n')
    return folder


def _run(argv: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "of the working folder was imported" not in output
    assert [line for line in output.splitlines() if " ERROR " in line or "Traceback" in line] == []
    return output


def _assert_nexus(path: Path, slices: int) -> None:
    with h5py.File(path, "r") as f:
        assert f.attrs["default"] == "entry"
        assert f["/entry/reconstruction/volume"].shape[0] == slices


@pytest.mark.slow
def test_replay_from_a_folder_with_shadowing_files(hostile_folder: Path) -> None:
    cli = str(Path(sys.executable).with_name("streamtomo"))
    _run([cli, "simulate", "--out", "scan", "--rows", "4", "--cols", "32", "--angles", "20"], hostile_folder)
    recordings = sorted(str(p) for p in (hostile_folder / "scan").glob("*.cbors"))
    assert len(recordings) == 2
    output = _run(
        [cli, "replay", "-f", *recordings, "-p", "scan/parameters.json", "-w", "2", "--out", "out.nxs"], hostile_folder
    )
    assert "final file: out.nxs" in output
    _assert_nexus(hostile_folder / "out.nxs", slices=4)


@pytest.mark.slow
def test_demo_with_the_working_folder_first_on_the_path(hostile_folder: Path) -> None:
    # python -m puts the working folder first on sys.path: the harshest case.
    output = _run(
        [
            sys.executable,
            "-m",
            "streamtomo.app.cli",
            "demo",
            "--rows",
            "4",
            "--cols",
            "32",
            "--angles",
            "20",
            "-w",
            "2",
            "--out",
            "demo.nxs",
        ],
        hostile_folder,
    )
    assert "summary: 40 frames" in output
    _assert_nexus(hostile_folder / "demo.nxs", slices=4)
