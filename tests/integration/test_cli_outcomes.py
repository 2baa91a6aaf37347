"""What ``streamtomo replay`` tells a scientist and a script at the end of a scan: the exit
status, the summary line and the log, run as a user runs it (the real CLI, a subprocess).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cbor2
import h5py
import numpy as np
import pytest

from tests.support.replay_helpers import keep_messages
from tests.unit.hsds_bridge.test_nexus_file import check_final_metadata

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


def _exit_2(
    argv: list[str], timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``streamtomo ARGV`` as a user runs it, refused as README says a usage error is:
    exit 2 and no traceback."""
    done = subprocess.run([CLI, *argv], capture_output=True, text=True, timeout=timeout, check=False, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    return done.stderr.strip().splitlines()[-1]


@contextlib.contextmanager
def _taken_port() -> Iterator[int]:
    """A port of 127.0.0.1 another program listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


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
    assert "angle slots empty" not in summary  # the parameters match the data
    # The --out file is a final file as a deployment writes it: what it is, the volume first.
    with h5py.File(tmp_path / "out.nxs", "r") as f:
        check_final_metadata(f)
        assert f["entry"].attrs["default"] == "volume"


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
    # Not a log line alone: the status, the final file and the summary say it too.
    assert "noticed: 1 limited_angle_coverage" in done.stdout
    with h5py.File(tmp_path / "out.nxs", "r") as f:
        rejected = json.loads(f["/entry/status/rejected"][()])
        assert rejected["limited_angle_coverage"] == 1  # a notice: no frame's rejection
        assert int(f["/entry/status/frames_rejected"][()]) == rejected["past_layout"]  # the 24 left out


@pytest.mark.parametrize("case", ["missing", "directory", "not a recording", "empty", "json", "hdf5"])
def test_a_recording_replay_cannot_use_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    """Each used to end in a traceback (FileNotFoundError; RuntimeError: replay failed:
    AssertionError() from inside dranspose's reader). A file not named .cbors was not
    checked: a parameter file ran a scan of 0 frames (exit 3), an HDF5 file crashed."""
    recordings, parameters = _simulate(tmp_path / "scan", angles=4)
    bad = tmp_path / "bad.cbors"
    if case == "json":
        bad = parameters  # dranspose reads every file but .pkls as CBOR
    elif case == "hdf5":
        bad = tmp_path / "scan.nxs"
        with h5py.File(bad, "w") as f:
            f["data"] = np.zeros(3)
    if case == "directory":
        bad.mkdir()
    elif case == "not a recording":
        bad.write_bytes(b"\x63abc" * 10)  # CBOR, but a string, not a dranspose message
    elif case == "empty":
        bad.write_bytes(b"")
    done = _replay([bad.as_posix(), recordings[1]], parameters, tmp_path / "out.nxs")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    expected = {
        "missing": "No such file or directory",
        "directory": "not a file",
        "not a recording": "not a dranspose recording",
        "empty": "empty, or cut inside its first message",
        "json": "not a dranspose recording",
        "hdf5": "an HDF5 file, not a dranspose recording: replay it with --nexus",
    }[case]
    assert done.stderr.strip().splitlines()[-1].startswith(f"streamtomo: error: {bad}: {expected}"), done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cbors", "pkls"])
def test_an_item_that_is_no_message_after_the_first_is_one_line_and_exit_2(tmp_path: Path, kind: str) -> None:
    """dranspose's reader asserts each item is a message: the replay ended in a traceback
    (``ReplayFailed: AssertionError()``, exit 1) that named no file."""
    from dranspose.replay import get_internals

    recordings, parameters = _simulate(tmp_path / "scan", angles=4)
    detector = next(Path(p) for p in recordings if "detector" in Path(p).name)
    angle = next(p for p in recordings if "angle" in Path(p).name)
    bad = tmp_path / f"detector.{kind}"
    if kind == "cbors":
        data = detector.read_bytes()
        stream = io.BytesIO(data)
        cbor2.load(stream)
        bad.write_bytes(data[: stream.tell()] + cbor2.dumps(7) + data[stream.tell() :])
        expected = f"{bad} holds an int as item 2, at byte {stream.tell()}: not a dranspose message"
    else:
        messages = list(get_internals(detector))
        with bad.open("wb") as f:
            for item in [messages[0], {"not": "a message"}, *messages[1:]]:
                pickle.dump(item, f)
        expected = f"{bad} holds a dict as item 2, at byte "
    last = _last_line(_exit_2(["replay", "-f", str(bad), angle, "-p", str(parameters)], timeout=240))
    assert last.startswith("streamtomo: error: replay failed: ") and expected in last, last


@pytest.mark.slow
def test_a_recording_cut_inside_a_message_is_named_when_the_scan_ends_short(tmp_path: Path) -> None:
    """dranspose takes a message cut off by the end of the file for the end of the
    recording: the scan ends short, and the CLI says which file is cut and where."""
    recordings, parameters = _simulate(tmp_path / "scan")
    detector = next(Path(p) for p in recordings if "detector" in Path(p).name)
    data = detector.read_bytes()
    detector.write_bytes(data[: len(data) * 2 // 3])
    done = _replay(recordings, parameters, tmp_path / "out.nxs")
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"scan incomplete: {detector} ends inside message " in done.stderr, done.stderr
    assert "the recording is cut short" in done.stderr
    _no_errors(done.stdout + done.stderr)


@pytest.mark.slow
def test_frames_that_never_came_are_named_in_the_summary(tmp_path: Path) -> None:
    """A recording that ends cleanly ten frames early: the scan finished (it reduced
    projections: exit 0, as README says), and the summary read like a whole scan's;
    only /entry/status said frames_lost 10."""
    recordings, parameters = _simulate(tmp_path / "scan")
    detector = next(Path(p) for p in recordings if "detector" in Path(p).name)
    keep_messages(detector, 1 + 34)  # the header and frames 0..33 of 44
    done = _replay(recordings, parameters, tmp_path / "out.nxs")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    summary = next(line for line in done.stdout.splitlines() if line.startswith("summary:"))
    assert "; 10 frames lost (never reached the reducer: 34-43)" in summary, summary
    with h5py.File(tmp_path / "out.nxs", "r") as f:
        assert f["/entry/status/frames_lost"][()] == 10


def _nexus_scan(path: Path, angles: np.ndarray, units: str | None) -> Path:
    """An NXtomo file: a dark, a flat and len(angles) projections of a flat object."""
    with h5py.File(path, "w") as f:
        data = np.full((2 + len(angles), 4, 16), 1000, dtype=np.uint16)
        data[0] = 100  # the dark
        f["/entry/instrument/detector/data"] = data
        f["/entry/instrument/detector/image_key"] = np.array([2, 1] + [0] * len(angles), dtype=np.int32)
        rotation = f.create_dataset("/entry/sample/rotation_angle", data=np.concatenate([[0.0, 0.0], angles]))
        if units is not None:
            rotation.attrs["units"] = units
    return path


@pytest.mark.parametrize(("units", "scale"), [("rad", np.pi / 180), ("radians", np.pi / 180), ("°", 1.0)])
def test_nexus_angles_follow_their_units(tmp_path: Path, units: str, scale: float) -> None:
    """Radians were read as degrees: a 162-degree scan became one of 2.8 degrees, exit 0."""
    path = _nexus_scan(tmp_path / "rad.nxs", np.arange(10) * 18.0 * scale, units)
    done = subprocess.run(
        [CLI, "replay", "--nexus", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "angles 0 + 18 x i deg" in done.stdout, done.stdout


def test_a_parameter_file_that_replaces_the_nexus_files_grid_says_so(tmp_path: Path) -> None:
    """A parameter file with every default (`streamtomo config`, kind_rule left out) set
    n_projections 180 over the file's 10: check said ok, with 170 of 180 slots empty."""
    path = _nexus_scan(tmp_path / "scan.nxs", np.arange(10) * 18.0, None)
    parameters = tmp_path / "p.json"
    parameters.write_text(json.dumps({"n_projections": 180, "angle_start": 0}))
    done = subprocess.run(
        [CLI, "check", str(parameters), "--nexus", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"warning: {parameters} sets n_projections 180, the file's angles give 10: the scan takes 180" in done.stderr
    assert "angle_start" not in done.stderr  # the same as the file's: nothing to say


def test_nexus_angles_in_units_that_are_no_angle_are_refused(tmp_path: Path) -> None:
    path = _nexus_scan(tmp_path / "mm.nxs", np.arange(10) * 18.0, "mm")
    assert "has units 'mm'; expected one of" in _last_line(_exit_2(["replay", "--nexus", str(path)]))


def test_a_kind_rule_other_than_the_files_image_key_is_refused_for_nexus(tmp_path: Path) -> None:
    """-p kind_rule counts replaced the file's image_key: 5 darks and 5 flats were read as
    10 of each, and 10 projections reconstructed as flats, exit 0."""
    path = tmp_path / "scan.nxs"
    with h5py.File(path, "w") as f:
        f["/entry/instrument/detector/data"] = np.zeros((12, 4, 8), dtype=np.uint16)
        f["/entry/instrument/detector/image_key"] = np.array([2, 1] + [0] * 10, dtype=np.int32)
        f["/entry/sample/rotation_angle"] = np.concatenate([[0.0, 0.0], np.linspace(0, 162, 10)])
    parameters = tmp_path / "p.json"
    parameters.write_text(json.dumps([{"name": "kind_rule", "data": "counts"}]))
    done = _exit_2(["replay", "--nexus", str(path), "-p", str(parameters)])
    assert "--nexus takes each frame's kind from the file's image_key" in _last_line(done)


def test_a_nexus_file_without_projections_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The grid is derived after the file is opened; its NexusError was a traceback."""
    path = tmp_path / "flats_only.nxs"
    with h5py.File(path, "w") as f:
        f["/entry/instrument/detector/data"] = np.zeros((3, 4, 8), dtype=np.uint16)
        f["/entry/instrument/detector/image_key"] = np.array([2, 1, 1], dtype=np.int32)
        f["/entry/sample/rotation_angle"] = np.zeros(3)
    done = _exit_2(["replay", "--nexus", str(path)])
    assert _last_line(done) == "streamtomo: error: the file has no projections (image_key 0)"


def test_a_port_that_is_taken_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """README: 2 is a usage error, a port that is taken among them. It was a
    ReplayFailed traceback, exit 1."""
    with _taken_port() as port:
        done = _exit_2(["demo", "--rows", "2", "--cols", "16", "--angles", "8", "--port", str(port),
                        "--out", str(tmp_path / "d.nxs")])  # fmt: skip
    last = _last_line(done)
    assert last.startswith("streamtomo: error: ") and f"127.0.0.1:{port}" in last, done.stderr


def test_a_port_that_is_taken_is_one_line_and_exit_2_for_hsds_too(tmp_path: Path) -> None:
    """It was HSDS's HsdsStartError traceback "address already in use", exit 1."""
    with _taken_port() as port:
        done = _exit_2(["hsds", "--root", str(tmp_path / "root"), "--port", str(port)])
    assert _last_line(done) == (
        f"streamtomo: error: --port {port} is taken: another program listens there (0: a free port)"
    )


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        # Each was a ReplayFailed traceback, exit 1.
        ({"STREAMTOMO_STREAM_TIMEOUT": "nan"}, "STREAMTOMO_STREAM_TIMEOUT='nan': seconds must be finite and >= 0"),
        ({"STREAMTOMO_CONTROL_PORT": "abc"}, "STREAMTOMO_CONTROL_PORT='abc' is not a port number"),
        # This one left the token's folder behind, and the REST server served on until the process left.
        ({"STREAMTOMO_CONTROL_PORT": "99999"}, "STREAMTOMO_CONTROL_PORT='99999': a port is 0 to 65535"),
        ({"STREAMTOMO_CONTROL_PORT": "taken"}, "control API cannot listen on 127.0.0.1:"),
    ],
)
def test_a_reducer_setting_from_the_environment_it_cannot_use_is_one_line_and_leaves_nothing(
    tmp_path: Path, variables: dict[str, str], message: str
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with _taken_port() as port:
        env = {**os.environ, "TMPDIR": str(scratch)}
        env.update({name: str(port) if value == "taken" else value for name, value in variables.items()})
        done = _exit_2(["demo", "--rows", "2", "--cols", "16", "--angles", "8"], env=env)
    assert _last_line(done).startswith(f"streamtomo: error: {message}"), done.stderr
    assert list(scratch.iterdir()) == []  # recordings, parameters, the control token: all removed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--rows", "0"], "argument --rows: 0 is not at least 1"),
        (["demo", "-w", "0"], "argument -w/--workers: 0 is not at least 1"),
        (["demo", "--rate", "-1"], "argument --rate: -1 is not above 0"),
        (["demo", "--port", "99999"], "argument --port: 99999 is not a port"),
        (["demo", "--angles", "1"], "argument --angles: 1 is not at least 2"),  # the simulator's limits
        (["simulate", "--out", "/tmp/never-made", "--cols", "4"], "argument --cols: 4 is not at least 8"),
        (["up", "-w", "0"], "argument -w/--workers: 0 is not at least 1"),
        (["simulate", "--out", "/proc/streamtomo-test/out"], "No such file or directory"),
        # A file where a folder is wanted (this program's own): '[Errno 17] File exists'
        # before, naming no option.
        (["simulate", "--out", CLI], f"argument --out: {CLI} is a file, not a folder"),
        (["hsds", "--root", f"{CLI}/x"], f"argument --root: {CLI}/x: {CLI} is a file, not a folder"),
        (["up", "--run-dir", CLI], f"argument --run-dir: {CLI} is a file, not a folder"),
    ],
)
def test_values_out_of_range_and_paths_that_cannot_be_made_are_one_line_and_exit_2(
    args: list[str], message: str
) -> None:
    """Each was a traceback from deep inside (exit 1): README says 2 is a usage error."""
    done = _exit_2(args)
    assert message in _last_line(done), done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_mid_scan_stops_it_at_once_and_leaves_nothing(
    tmp_path: Path, sig: signal.Signals, status: int
) -> None:
    """dranspose's replay has no stop: Ctrl-C let the whole paced scan play on and then
    printed a traceback; SIGTERM left the temporary folders (the control token's among
    them). As a shell's background job, SIGINT even started out ignored. The scan ends
    with what it had, its --out file too (none was written, and nothing said so)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "scan.nxs"
    process = subprocess.Popen(
        [CLI, "demo", "--rows", "4", "--cols", "32", "--angles", "60", "--pace", "600", "--out", str(out)],
        env={**os.environ, "TMPDIR": str(scratch)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as a background job
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # streaming once it says where to watch
            if line.startswith("pacing the scan"):
                break
        else:
            pytest.fail(f"the demo ended before it streamed: {process.communicate()}")
        process.send_signal(sig)
        rest, err = process.communicate(timeout=60)  # the scan was paced over 600 s
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == status, err
    assert "Traceback" not in err and "interrupted: " in err, err
    assert list(scratch.iterdir()) == []  # recordings, parameters, the control token: all removed
    assert f"final file: {out}" in rest, (rest, err)
    with h5py.File(out, "r") as f:
        assert f["entry/status/state"][()].decode() not in ("waiting", "running")


def test_a_simulated_size_the_pipeline_refuses_is_one_line_and_makes_no_folder(tmp_path: Path) -> None:
    """A ConfigError traceback (exit 1), after the output folder had been made."""
    out = tmp_path / "sim"
    done = _exit_2(["simulate", "--out", str(out), "--rows", "2", "--cols", "100000"])
    assert _last_line(done).startswith("streamtomo: error: slice_size must be at most")
    assert not out.exists()


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("folder", "is a folder: name a file in it"),
        ("file/x.nxs", "is a file, not a folder"),
        # A folder no file can be made in whatever the user (root included): os.access said yes.
        ("/proc/streamtomo-test.nxs", "cannot write in /proc"),
    ],
)
def test_an_out_that_cannot_be_written_is_refused_before_the_scan(tmp_path: Path, out: str, message: str) -> None:
    """It was found only after the whole scan had run, with the internal temporary name
    in the message (or 'File exists' for a parent that is a file), and the result lost."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    done = subprocess.run(
        [CLI, "demo", "--rows", "2", "--cols", "16", "--angles", "8", "--out", str(tmp_path / out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr.strip().splitlines()[-1], done.stderr
    assert "summary:" not in done.stdout and ".part" not in done.stderr  # before the scan


@pytest.mark.slow
def test_an_out_that_cannot_be_written_after_the_scan_says_so_after_its_summary(tmp_path: Path) -> None:
    """A folder that became a file during the scan: the summary, then one line naming
    --out, exit 2 (the writer's exception came instead of the summary)."""
    recordings, parameters = _simulate(tmp_path / "scan")
    folder = tmp_path / "results"
    folder.mkdir()
    player = subprocess.Popen(
        [CLI, "replay", "-f", *recordings, "-p", str(parameters), "--out", str(folder / "x.nxs"), "--rate", "15"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert player.stdout is not None
        for line in player.stdout:  # the scan starts after the --out check and these lines
            if line.startswith("domain:"):
                break
        folder.rmdir()
        folder.write_text("")  # 44 frames at 15 per second: the scan is still under way
        out, err = player.communicate(timeout=120)
    finally:
        player.kill()
    assert player.returncode == 2, out + err
    assert "summary: 44 frames (24 projections" in out
    assert f"streamtomo: error: --out {folder / 'x.nxs'} was not written: File exists ({folder})\n" in err, err


@pytest.mark.parametrize("case", ["twice", "no detector stream", "no angle stream"])
def test_recordings_that_cannot_make_a_scan_together_are_refused_before_it(tmp_path: Path, case: str) -> None:
    """Two recordings of one stream (a second scan simulated into the same folder) crashed
    inside dranspose ('Cannot merge data with duplicate streams'); recordings without the
    detector stream ran a scan of 0 frames that did not say why (exit 3); without the
    angle stream every projection was refused as missing_angle, with advice about
    shifted PandA rows (check_nominal_angles) that did not help."""
    recordings, parameters = _simulate(tmp_path / "scan", angles=4)
    if case == "twice":
        recordings = [*recordings, recordings[0]]
        expected = "both hold stream"
    elif case == "no angle stream":
        recordings = [r for r in recordings if "angle" not in Path(r).name]
        expected = "no recording holds the angle stream 'angle' (angle_stream); they hold 'detector': give the PandA"
    else:
        parameters = _with(parameters, {"detector_stream": "xrd"})
        expected = "no recording holds the detector stream 'xrd' (detector_stream); they hold 'angle', 'detector'"
    done = _replay(recordings, parameters, tmp_path / "out.nxs")
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr.strip().splitlines()[-1], done.stderr
    assert "summary:" not in done.stdout  # refused before the scan


@pytest.mark.slow
def test_a_grid_that_does_not_match_the_data_says_so_in_the_summary(tmp_path: Path) -> None:
    """n_projections twice the scan's: half the slots empty, and the summary read like a clean scan."""
    recordings, parameters = _simulate(tmp_path / "scan")  # 24 projections
    done = _replay(recordings, _with(parameters, {"n_projections": "48"}), tmp_path / "out.nxs")
    summary = next(line for line in done.stdout.splitlines() if line.startswith("summary:"))
    assert "; 24 of 48 angle slots empty (see the angle grid parameters)" in summary, summary


@pytest.mark.slow
def test_a_failed_scan_whose_detector_was_known_opens_on_no_default_plot(tmp_path: Path) -> None:
    """Darks and flats came, but every projection's angle lay off the grid: the file's
    default chain opened the slices, all zeros, as the scan's result in silx and h5web
    (README: a scan that reduced nothing has no /entry default)."""
    recordings, parameters = _simulate(tmp_path / "scan")
    changed = _with(parameters, {"angle_start": "1000"})  # no measured angle is on this grid
    done = _replay(recordings, changed, tmp_path / "out.nxs")
    assert done.returncode == 3, done.stdout + done.stderr
    with h5py.File(tmp_path / "out.nxs", "r") as f:
        assert f["/entry/status/state"][()] == b"failed"
        assert int(f["/entry/status/projections"][()]) == 0 and int(f["/entry/status/darks"][()]) > 0
        assert "reconstruction" in f["/entry"]  # the detector was known: its arrays are there
        assert "default" not in f["/entry"].attrs


def test_an_out_that_names_the_scans_own_input_is_refused(tmp_path: Path) -> None:
    """`replay -f REC... --out REC` replaced the recording with the result (exit 0);
    `--nexus F --out F` the raw NXtomo file."""
    recordings, parameters = _simulate(tmp_path / "scan")
    before = Path(recordings[0]).read_bytes()
    done = _exit_2(["replay", "-f", *recordings, "-p", str(parameters), "--out", recordings[0]])
    assert "is the scan's own input" in _last_line(done), done.stderr
    assert Path(recordings[0]).read_bytes() == before


def test_the_out_file_names_itself_in_its_status(tmp_path: Path) -> None:
    """README: the final file names itself in status/final_file. The --out file said ''
    (the live domain names no file where the deployment writes none)."""
    out = tmp_path / "scan.nxs"
    done = subprocess.run(
        [CLI, "demo", "--rows", "2", "--cols", "16", "--angles", "8", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with h5py.File(out, "r") as f:
        assert f["/entry/status/final_file"].asstr()[()] == str(out)


def test_up_refuses_a_reducer_setting_from_the_environment_before_starting_anything(tmp_path: Path) -> None:
    """STREAMTOMO_FINAL_WAIT=abc was raised in the reducer's service, where dranspose
    swallows it: up waited 60 s for the live domain, blamed it ('not ready'), exit 3."""
    done = _exit_2(
        ["up", "-w", "1", "--run-dir", str(tmp_path / "run"), "--state", str(tmp_path / "state.json")],
        timeout=60,
        env={**os.environ, "STREAMTOMO_FINAL_WAIT": "abc"},
    )
    assert _last_line(done) == "streamtomo: error: STREAMTOMO_FINAL_WAIT='abc' is not a number of seconds"
    assert not (tmp_path / "state.json").exists() and not (tmp_path / "run" / "logs").exists()
    # Without --run-dir: the temporary run dir made for it is not left behind.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    _exit_2(
        ["up", "-w", "1", "--state", str(tmp_path / "state.json")],
        timeout=60,
        env={**os.environ, "STREAMTOMO_FINAL_WAIT": "abc", "TMPDIR": str(scratch)},
    )
    assert list(scratch.iterdir()) == []


def test_up_refuses_an_hsds_mirror_without_credentials(tmp_path: Path) -> None:
    """The reducer mirrored nothing (a WARNING in its log) and up and play said all was
    well; demo and replay --hsds refuse it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMTOMO_HSDS_", "HS_"))}
    done = _exit_2(
        ["up", "-w", "1", "--run-dir", str(tmp_path / "run"), "--state", str(tmp_path / "state.json")],
        timeout=60,
        env={**env, "STREAMTOMO_HSDS_ENDPOINT": "http://127.0.0.1:1"},
    )
    assert "STREAMTOMO_HSDS_ENDPOINT=http://127.0.0.1:1: no HSDS credentials" in _last_line(done)
