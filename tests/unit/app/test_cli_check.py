"""``streamtomo check``: what the scan would refuse, found before the beamtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamtomo.app.cli import main
from streamtomo.pipeline.reconstruction.backends import available_backends, installed_backends
from tests.support.replay_helpers import keep_messages


def _parameters(tmp_path: Path, **values: str) -> str:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"name": k, "data": v} for k, v in values.items()]))
    return str(path)


def test_a_good_file_is_ok_and_says_what_it_did_not_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", _parameters(tmp_path, center="30")]) == 0
    assert "ok (give --rows and --cols, or --data, to check it against a detector too)" in capsys.readouterr().out
    assert main(["check", _parameters(tmp_path, center="30"), "--rows", "8", "--cols", "64"]) == 0
    out = capsys.readouterr().out
    assert "ok on a 8 x 64 detector; the reducer will hold 696.32 kB of" in out  # not "0.00 GB"
    assert "(memory_budget_gb: half of this machine's memory)" in out


@pytest.mark.parametrize("given", [["--rows", "64"], ["--cols", "64"]])
def test_one_of_rows_and_cols_alone_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], given: list[str]
) -> None:
    # It checked nothing and said "ok": rows 100:200 passed against "--rows 64".
    assert main(["check", _parameters(tmp_path, rows="100:200"), *given]) == 2
    assert f"give both --rows and --cols (got only {given[0]})" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # The scan sees the binned detector: these passed check and then crashed a replay.
        ({"bin": "2", "rows": "6:8"}, "(bin 2: 4 x 32): row selection '6:8' selects rows outside 0..3"),
        ({"bin": "2", "center": "40"}, "(bin 2: 4 x 32): center 40.0 lies outside the detector (allowed 0..31)"),
        # What the reducer refuses at the first frame (it passed check).
        ({"memory_budget_gb": "1e-6"}, "this scan needs 696.32 kB"),
    ],
)
def test_what_the_scan_would_refuse_is_refused_here(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], values: dict[str, str], message: str
) -> None:
    assert main(["check", _parameters(tmp_path, **values), "--rows", "8", "--cols", "64"]) == 2
    assert message in capsys.readouterr().err


def test_a_volume_backend_that_is_not_installed_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = [name for name in available_backends() if name not in installed_backends()]
    if not missing:
        pytest.skip("every reconstruction backend is installed here")
    assert main(["check", _parameters(tmp_path, backend=missing[0], volume="True")]) == 2
    assert f"the end-of-scan volume: reconstruction backend {missing[0]!r}" in capsys.readouterr().err
    assert main(["check", _parameters(tmp_path, backend=missing[0], volume="False")]) == 0  # no volume: no need


# -- against the scan's own recordings (--data) ------------------------------------------
@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A simulated scan as the ingesters record it, with its parameter file."""
    out = tmp_path_factory.mktemp("scan")
    assert main(["simulate", "--out", str(out), "--rows", "8", "--cols", "64", "--angles", "90"]) == 0
    return out / "parameters.json", sorted(str(p) for p in out.glob("*.cbors"))


def _with(parameters: Path, tmp_path: Path, **changes: str) -> str:
    """The scan's parameter file with ``changes``."""
    values = {p["name"]: p["data"] for p in json.loads(parameters.read_text())}
    values.update(changes)
    return _parameters(tmp_path, **values)


def test_the_data_give_the_detector_and_show_the_scan_as_the_workers_read_it(
    recorded: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    parameters, data = recorded
    assert main(["check", str(parameters), "--data", *data]) == 0
    out, err = capsys.readouterr()
    assert "detector 8 x 64 uint16; 10 darks, 10 flats, 90 projections (kind_rule counts)" in out
    assert "90 projections from 0.000 to 178.000 deg" in out and "0 slots empty, 0 shared" in out
    assert "ok on a 8 x 64 detector" in out
    assert "warning" not in err


@pytest.mark.parametrize(
    ("changes", "warning"),
    [
        # Angles of another scan: half the slots stay empty, and it says which rule.
        ({"angle_range": "360"}, "45 slots empty"),
        # A fixed base of 1 on frames numbered from 0: the first frame is refused, every kind one off.
        ({"frame_base": "1"}, "frame_before_base"),
        # A grid from 90 degrees on a scan from 0: half the projections fall off it, the first one named.
        ({"angle_start": "90"}, "(unknown_angle; the first: angle 0.0000 deg matches no slot of the grid of"),
    ],
)
def test_parameters_that_misread_the_data_say_how(
    recorded: tuple[Path, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, str],
    warning: str,
) -> None:
    parameters, data = recorded
    assert main(["check", _with(parameters, tmp_path, **changes), "--data", *data]) == 0
    out, err = capsys.readouterr()
    assert warning in out + err


def test_parameters_under_which_no_projection_would_be_reduced_are_refused(
    recorded: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parameters, data = recorded
    assert main(["check", _with(parameters, tmp_path, encoder_field="INENC9.VAL.Mean"), "--data", *data]) == 2
    err = capsys.readouterr().err
    assert "encoder_field_missing" in err and "no frame of the data would be used" in err


def test_parameters_that_leave_the_scan_without_flats_are_refused(
    recorded: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every frame a projection (no darks or flats before them): check said "ok", and
    the replay failed, every projection rejected as no_references."""
    parameters, data = recorded
    no_flats = _with(parameters, tmp_path, n_darks_before="0", n_flats_before="0", n_projections="110")
    assert main(["check", no_flats, "--data", *data]) == 2
    assert "no frame of the data is a flat under these parameters" in capsys.readouterr().err
    # An earlier scan's flats (keep_references): nothing to say here.
    kept = _with(
        parameters, tmp_path, n_darks_before="0", n_flats_before="0", n_projections="110", keep_references="true"
    )
    assert main(["check", kept, "--data", *data]) == 0


def test_data_without_projections_are_refused_with_what_they_hold(
    recorded: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Recordings that end after the darks and flats: refused with "see the warnings
    above", and no warning was printed."""
    parameters, data = recorded
    short = []
    for path in map(Path, data):
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes())
        short.append(str(copy))
    keep_messages(next(Path(p) for p in short if "detector" in Path(p).name), 1 + 20)  # header, 10 darks, 10 flats
    assert main(["check", str(parameters), "--data", *short]) == 2
    out, err = capsys.readouterr()
    assert "10 darks, 10 flats, 0 projections" in out
    assert "no frame of the data is a projection under these parameters (kind_rule counts)" in err
    assert "see the warnings" not in err


def test_a_detector_shape_that_contradicts_the_data_is_refused(
    recorded: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    parameters, data = recorded
    assert main(["check", str(parameters), "--data", *data, "--rows", "16", "--cols", "64"]) == 2
    assert "the data's detector is 8 x 64" in capsys.readouterr().err


def test_data_that_are_no_recordings_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "scan.cbors"
    junk.write_bytes(b"not cbor at all")
    assert main(["check", _parameters(tmp_path), "--data", str(junk)]) == 2
    assert "--data:" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["cut", "corrupt"])
def test_a_recording_cut_short_or_corrupt_inside_is_named(
    recorded: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    """It said "ok" for a recording cut near its end, blamed the parameter file for one
    cut early, and a corrupt middle was a traceback."""
    parameters, data = recorded
    detector = next(Path(p) for p in data if "detector" in Path(p).name)
    raw = detector.read_bytes()
    damaged = tmp_path / detector.name
    if damage == "cut":
        damaged.write_bytes(raw[: len(raw) * 3 // 4])
    else:
        middle = len(raw) // 2
        damaged.write_bytes(raw[:middle] + b"\xff" * 64 + raw[middle + 64 :])
    others = [p for p in data if Path(p) != detector]
    assert main(["check", str(parameters), "--data", str(damaged), *others]) == 2
    err = capsys.readouterr().err
    assert f"--data: {damaged}" in err
    assert ("is cut short" if damage == "cut" else "does not decode after message") in err


# -- against an NXtomo file (--nexus), as replay --nexus streams it ----------------------
N_PROJECTIONS = 30


@pytest.fixture(scope="module")
def nxtomo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An NXtomo file in DIAD's order (flats, darks, projections, flats) at 6-degree steps."""
    import h5py
    import numpy as np

    keys = [1] * 3 + [2] * 3 + [0] * N_PROJECTIONS + [1] * 2
    angles = np.concatenate([np.zeros(6), 6.0 * np.arange(N_PROJECTIONS), np.full(2, 174.0)])
    frames = np.random.default_rng(0).integers(100, 4000, (len(keys), 8, 64), dtype=np.uint16)
    path = tmp_path_factory.mktemp("nexus") / "scan.nxs"
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        detector = entry.create_group("instrument/detector")
        detector.attrs["NX_class"] = "NXdetector"
        detector["data"] = frames
        detector["image_key"] = np.array(keys, dtype=np.int32)
        entry["sample/rotation_angle"] = angles
    return path


def test_a_nexus_file_is_checked_as_replay_streams_it(
    nxtomo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamtomo.app import recordings

    def no_copy(*args: object, **kwargs: object) -> None:
        raise AssertionError("check wrote the file out as recordings")

    # The streams are surveyed as they are made: a file of gigabytes is not copied to disk first.
    monkeypatch.setattr(recordings, "write_recordings", no_copy)
    assert main(["check", _parameters(tmp_path, center="32"), "--nexus", str(nxtomo)]) == 0
    out, err = capsys.readouterr()
    assert f"nexus: 38 frames from /entry/instrument/detector/data, {N_PROJECTIONS} projections" in out
    # Kinds from the file's image_key, the grid from its angles: nothing is refused.
    assert f"detector 8 x 64 uint16; 3 darks, 5 flats, {N_PROJECTIONS} projections (kind_rule header)" in out
    assert f"{N_PROJECTIONS} projections from 0.000 to 174.000 deg" in out and "0 slots empty, 0 shared" in out
    assert "ok on a 8 x 64 detector" in out
    assert "warning" not in err


def test_a_parameter_file_that_misreads_a_nexus_file_says_how(
    nxtomo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A grid of twice the scan's range: half its slots stay empty.
    values = {"center": "32", "angle_start": "0", "angle_range": "360", "n_projections": str(N_PROJECTIONS)}
    assert main(["check", _parameters(tmp_path, **values), "--nexus", str(nxtomo)]) == 0
    out, _ = capsys.readouterr()
    assert f"{N_PROJECTIONS // 2} slots empty" in out
    # A kind rule that counts by position would read the file's flats as darks: refused.
    assert main(["check", _parameters(tmp_path, kind_rule="counts"), "--nexus", str(nxtomo)]) == 2
    assert "--nexus takes each frame's kind from the file's image_key" in capsys.readouterr().err


def test_data_and_nexus_exclude_each_other(nxtomo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["check", _parameters(tmp_path), "--nexus", str(nxtomo), "--data", "a.cbors"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_nexus_paths_without_a_nexus_file_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # They were ignored without a word: the check ran on --data (or on nothing) instead.
    assert main(["check", _parameters(tmp_path), "--nexus-angles", "/entry/theta"]) == 2
    assert "--nexus-angles name datasets of the file given with --nexus" in capsys.readouterr().err
