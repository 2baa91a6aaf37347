"""``streamtomo replay --nexus``: the real DIAD (Diamond k11) NXtomo scan streamed
through the real CLI, dranspose replay, workers and reducer.

The file and its reference sinogram: :mod:`tests.support.diad`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.support.diad import KEYS, diad_file, expected_sinogram

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def diad() -> Path:
    return diad_file()


def _cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamtomo.app.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _replay(args: list[str], cwd: Path) -> str:
    done = _cli(["replay", *args], cwd)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert [line for line in output.splitlines() if " ERROR " in line or "Traceback" in line] == []
    return output


def test_diad_scan_lands_exactly(diad: Path, tmp_path: Path) -> None:
    output = _replay(["--nexus", str(diad), "-w", "2", "--out", "out.nxs"], tmp_path)
    # The dangling links are named in a warning; the scan goes on.
    warning = next(line for line in output.splitlines() if " WARNING " in line and "missing (ignored)" in line)
    assert "34 links" in warning
    assert "k11-18014-detectorPanda.h5" in warning
    assert "3001 projections" in output

    expected, angles = expected_sinogram(diad, flats_after=True)
    with h5py.File(tmp_path / "out.nxs", "r") as f:
        assert f["/entry/status/state"][()].decode() == "finished"
        assert int(f["/entry/status/projections"][()]) == 3001
        assert int(f["/entry/status/frames_rejected"][()]) == 0
        sinogram = f["/entry/sinogram/data"][()]
        slot_angles = f["/entry/sinogram/rotation_angle"][()]
        frames_per_angle = f["/entry/sinogram/frames_per_angle"][()]
    # Each projection in its own slot, in acquisition order: one frame per slot and
    # the slot's angle is that projection's measured angle (through the PandA line).
    assert frames_per_angle.tolist() == [1] * 3001
    np.testing.assert_allclose(slot_angles, angles, rtol=0, atol=1e-6)
    assert sinogram.shape == expected.shape == (22, 3001, 26)
    np.testing.assert_allclose(sinogram, expected, rtol=0, atol=1e-4)
    # The flats after the scan matter here: without them the rows differ far beyond that.
    before_only, _ = expected_sinogram(diad, flats_after=False)
    assert np.abs(sinogram - before_only).max() > 100 * 1e-4


def test_paths_and_grid_can_be_given(diad: Path, tmp_path: Path) -> None:
    # Explicit paths (DIAD's NXdata copies of the same links) and a parameter file
    # that sets the grid: its values win over the ones derived from the angles.
    params = tmp_path / "parameters.json"
    params.write_text('{"n_projections": 3001, "angle_start": 89.995, "angle_range": 180.06, "volume": false}')
    output = _replay(
        [
            "--nexus",
            str(diad),
            "--nexus-data",
            "/entry/imaging/data",
            "--nexus-angles",
            "/entry/imaging/gts_theta_value",
            "--nexus-keys",
            KEYS,
            "-p",
            str(params),
            "-w",
            "1",
            "--out",
            "out.nxs",
        ],
        tmp_path,
    )
    assert "angles 89.995 + 0.06 x i deg from /entry/imaging/gts_theta_value" in output
    expected, angles = expected_sinogram(diad, flats_after=True)
    with h5py.File(tmp_path / "out.nxs", "r") as f:
        assert int(f["/entry/status/frames_rejected"][()]) == 0
        np.testing.assert_allclose(f["/entry/sinogram/rotation_angle"][()], angles, rtol=0, atol=1e-6)
        np.testing.assert_allclose(f["/entry/sinogram/data"][()], expected, rtol=0, atol=1e-4)


def test_a_path_that_dangles_is_a_clear_error(diad: Path, tmp_path: Path) -> None:
    done = _cli(["replay", "--nexus", str(diad), "--nexus-data", "/entry/instrument/EtherCAT/data"], tmp_path, 120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "/entry/instrument/EtherCAT/data is not a dataset that can be read" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_reads_the_file_as_replay_streams_it(diad: Path, tmp_path: Path) -> None:
    params = tmp_path / "parameters.json"
    params.write_text('{"volume": false}')
    done = _cli(["check", str(params), "--nexus", str(diad)], tmp_path, 120)
    assert done.returncode == 0, done.stdout + done.stderr
    # DIAD's flats, darks, projections, flats, darks by their image_key; every angle in its slot.
    assert "detector 22 x 26 uint16; 100 darks, 100 flats, 3001 projections (kind_rule header)" in done.stdout
    assert "3001 projections from 89.995 to 269.995 deg" in done.stdout and "0 slots empty, 0 shared" in done.stdout
    assert "ok on a 22 x 26 detector" in done.stdout
    assert "warning:" not in done.stderr


def test_config_prints_parameters_that_fit_the_file(diad: Path, tmp_path: Path) -> None:
    """`streamtomo config` gave the defaults: kind_rule counts (which --nexus refuses)
    and a grid of 180 slots over 0..180 degrees, not the file's 3001 over 89.995..."""
    done = _cli(["config", "--nexus", str(diad)], tmp_path, 120)
    assert done.returncode == 0, done.stdout + done.stderr
    params = tmp_path / "parameters.json"
    params.write_text(done.stdout)  # JSON alone: the file's summary line goes to stderr
    checked = _cli(["check", str(params), "--nexus", str(diad)], tmp_path, 120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "3001 projections from 89.995 to 269.995 deg" in checked.stdout
    assert "0 slots empty, 0 shared" in checked.stdout
    assert "warning:" not in checked.stderr
    defaults = tmp_path / "defaults.json"
    defaults.write_text(_cli(["config"], tmp_path, 60).stdout)
    refused = _cli(["check", str(defaults), "--nexus", str(diad)], tmp_path, 120)
    assert refused.returncode == 2 and "sets kind_rule 'counts': leave it out" in refused.stderr


def test_a_frame_base_other_than_the_streams_is_refused(diad: Path, tmp_path: Path) -> None:
    """The file's frames are streamed numbered from 0: frame_base 1 put every projection
    at its neighbour's angle (the volume 106% of its peak off), exit 0, nothing said."""
    params = tmp_path / "parameters.json"
    params.write_text('{"frame_base": 1}')
    done = _cli(["check", str(params), "--nexus", str(diad)], tmp_path, 120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "sets frame_base '1': leave it out" in done.stderr


def test_angles_that_never_change_are_refused_not_given_a_grid(diad: Path, tmp_path: Path) -> None:
    """--nexus-angles naming the image_key (0 for every projection): config and check
    made up a grid of 180 degrees, check said "ok", and replay averaged all 3001
    projections into slot 0 and exited 0."""
    wrong = ["--nexus", str(diad), "--nexus-angles", "/entry/instrument/imaging/image_key"]
    params = tmp_path / "parameters.json"
    params.write_text('{"volume": false}')
    for command in (["config"], ["check", str(params)]):
        done = _cli([*command, *wrong], tmp_path, 120)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "all 3001 projections have the same angle (0)" in done.stderr, done.stderr
        assert "--nexus-angles" in done.stderr and "Traceback" not in done.stderr
