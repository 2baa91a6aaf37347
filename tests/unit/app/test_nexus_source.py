"""NXtomo files read as scans: standard paths, external links, dangling links, grids."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from streamtomo.app.cli import main
from streamtomo.app.nexus_source import NexusError, NexusReadError, NexusScan, ScanGrid, derive_grid
from streamtomo.pipeline.scan import ImageKey


def _nxtomo(path: Path, keys: list[int], angles: np.ndarray, external: bool = True) -> np.ndarray:
    """A standard NXtomo entry whose frames live in another file, plus a dangling link."""
    frames = np.arange(len(keys) * 3 * 4, dtype=np.uint16).reshape(len(keys), 3, 4)
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        detector = entry.create_group("instrument/detector")
        detector.attrs["NX_class"] = "NXdetector"
        if external:
            with h5py.File(path.with_name("frames.h5"), "w") as g:
                g["/images"] = frames
            detector["data"] = h5py.ExternalLink("frames.h5", "/images")
        else:
            detector["data"] = frames
        detector["image_key"] = np.array(keys, dtype=np.int32)
        entry["sample/rotation_angle"] = angles
        entry["monitor/data"] = h5py.ExternalLink("never-published.h5", "/current")
    return frames


def test_standard_paths_through_an_external_link(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "scan.nxs"
    keys = [2, 1, 0, 0, 0, 1]
    angles = np.array([0.0, 0.0, 10.0, 20.0, 30.0, 30.0])
    frames = _nxtomo(path, keys, angles)
    with caplog.at_level(logging.WARNING), NexusScan(path) as scan:
        assert scan.paths.data == "/entry/instrument/detector/data"
        assert scan.paths.image_key == "/entry/instrument/detector/image_key"
        assert scan.paths.rotation_angle == "/entry/sample/rotation_angle"
        read = list(scan.frames())
    assert [f.index for f in read] == list(range(6))
    assert [f.key for f in read] == [ImageKey.DARK, ImageKey.FLAT, *[ImageKey.PROJECTION] * 3, ImageKey.FLAT]
    assert [f.angle_deg for f in read] == angles.tolist()
    for frame, expected in zip(read, frames, strict=True):
        np.testing.assert_array_equal(frame.data, expected)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "/entry/monitor/data -> never-published.h5:/current" in warnings[0]


def test_overrides_and_missing_datasets(tmp_path: Path) -> None:
    path = tmp_path / "scan.nxs"
    _nxtomo(path, [0, 0], np.array([0.0, 90.0]), external=False)
    with h5py.File(path, "a") as f:
        f["/entry/other_angles"] = np.array([1.0, 91.0])
    with NexusScan(path, rotation_angle="/entry/other_angles") as scan:
        assert scan.projection_angles().tolist() == [1.0, 91.0]
    with pytest.raises(NexusError, match="/entry/monitor/data is not a dataset"):
        NexusScan(path, data="/entry/monitor/data")
    with h5py.File(path, "a") as f:
        del f["/entry/sample/rotation_angle"]
    with pytest.raises(NexusError, match="--nexus-angles"):
        NexusScan(path)


def test_bad_image_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scan.nxs"
    _nxtomo(path, [0, 7], np.array([0.0, 90.0]))
    with pytest.raises(ValueError, match="unknown image_key 7"):
        NexusScan(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("float keys", r"image_key holds values that are not whole numbers: \[0.4\]"),
        ("bool keys", "image_key holds bool, not numbers"),
        ("compound angles", "rotation_angle holds .* not numbers"),
        ("scalar data", r"data has shape \(\); expected \(frames, rows, columns\)"),
    ],
)
def test_datasets_of_the_wrong_kind_are_refused_with_their_name(tmp_path: Path, change: str, message: str) -> None:
    """Each used to end in an uncaught IndexError or TypeError, or (keys of 0.4 and
    True) to read as projections and flats."""
    path = tmp_path / "scan.nxs"
    _nxtomo(path, [2, 1, 0, 0], np.array([0.0, 0.0, 10.0, 20.0]), external=False)
    with h5py.File(path, "a") as f:
        detector = f["/entry/instrument/detector"]
        if change == "float keys":
            del detector["image_key"]
            detector["image_key"] = np.array([2.0, 1.0, 0.4, 0.0])
        elif change == "bool keys":
            del detector["image_key"]
            detector["image_key"] = np.array([True, True, False, False])
        elif change == "compound angles":
            del f["/entry/sample/rotation_angle"]
            f["/entry/sample/rotation_angle"] = np.zeros(4, dtype=[("a", "<i4"), ("b", "<f8")])
        else:
            del detector["data"]
            detector["data"] = np.float32(1.0)
    with pytest.raises(NexusError, match=message):
        NexusScan(path, rotation_angle="/entry/sample/rotation_angle")


def test_grid_from_measured_angles() -> None:
    # Inclusive: 3001 projections from 89.995 to 269.995 -> slot per projection.
    angles = 89.995 + 0.06 * np.arange(3001) + np.random.default_rng(0).uniform(-0.02, 0.02, 3001)
    angles[0], angles[-1] = 89.995, 269.995
    grid = derive_grid(angles)
    assert grid.n_projections == 3001
    assert grid.angle_start == 89.995
    step = grid.angle_range / grid.n_projections
    assert step == pytest.approx(0.06)
    slots = np.round((angles - grid.angle_start) / step)
    assert slots.tolist() == list(range(3001))
    # Descending angles: the same slots, counted from the smallest.
    assert derive_grid(angles[::-1]) == grid
    with pytest.raises(NexusError, match="no projections"):
        derive_grid(np.array([]))


def test_a_whole_turn_is_a_grid_of_360_degrees() -> None:
    """362 projections over 0..359.0055 came out 360.00000000000006 degrees, which the
    configuration refuses (angle_range must be in (0, 360]): for a range never set."""
    turn = derive_grid(np.linspace(0.0, 359.0055, 362))
    assert turn == ScanGrid(0.0, 360.0, 362)
    jitter = np.random.default_rng(1).uniform(-0.02, 0.02, 3600)
    assert derive_grid(0.1 * np.arange(3600) + jitter).angle_range == 360.0
    # 0..360 inclusive: the last projection is the first angle again, one slot fewer.
    assert derive_grid(np.linspace(0.0, 360.0, 181)) == ScanGrid(0.0, 360.0, 180)
    assert derive_grid(np.linspace(0.0, 180.0, 181)) == ScanGrid(0.0, 181.0, 181)  # a half turn, both ends
    assert derive_grid(np.linspace(0.0, 720.0, 721)).angle_range > 360.0  # two turns: the CLI asks for the grid
    # An open turn whose ends jitter outward: read as closed (3599 slots, two shared).
    ends_out = 0.1 * np.arange(3600)
    ends_out[0], ends_out[-1] = -0.03, 359.93
    assert derive_grid(ends_out) == ScanGrid(-0.03, 360.0, 3600)


def test_projections_missing_from_an_even_grid_leave_their_slots_empty() -> None:
    """10 of 181 projections missing: the mean step, (max - min) / (n - 1), was 1.06
    degrees, and ten pairs a degree apart shared slots (0.207 relative error, against
    0.168 with the right step)."""
    angles = np.delete(np.linspace(0.0, 180.0, 181), range(50, 60))
    assert derive_grid(angles) == ScanGrid(0.0, 181.0, 181)
    jittered = 0.1 * np.arange(3600) + np.random.default_rng(0).uniform(-0.02, 0.02, 3600)
    assert derive_grid(np.delete(jittered, [5, 700, 701])).n_projections == 3600
    # A golden-angle scan is no grid with projections missing: one slot per projection.
    golden = np.mod(111.246 * np.arange(300), 180.0)
    assert derive_grid(golden).n_projections == 300


def test_an_unknown_image_key_names_its_dataset(tmp_path: Path) -> None:
    path = tmp_path / "scan.nxs"
    _nxtomo(path, [0, 7], np.array([0.0, 90.0]))
    with pytest.raises(NexusError, match=r"^/entry/instrument/detector/image_key in .*scan.nxs: unknown image_key 7"):
        NexusScan(path)


def _nxtomo_with_frames(path: Path, frames: np.ndarray) -> Path:
    """A dark, a flat and a projection (0, 0, 10 degrees) whose frames are ``frames``."""
    _nxtomo(path, [2, 1, 0], np.array([0.0, 0.0, 10.0]), external=False)
    with h5py.File(path, "a") as f:
        del f["/entry/instrument/detector/data"]
        f["/entry/instrument/detector/data"] = frames
    return path


STRING_FRAMES = np.full((3, 3, 4), b"abc", dtype="S3")


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        (STRING_FRAMES, "3-byte strings (dtype |S3)"),
        (np.full((3, 3, 4), 1 + 2j, dtype=np.complex64), "dtype complex64"),  # the workers refuse it
        (np.zeros((3, 3, 4), dtype=bool), "dtype bool"),
    ],
)
def test_frames_that_are_no_pixels_are_refused_with_dataset_and_dtype(
    tmp_path: Path, values: np.ndarray, shown: str
) -> None:
    """|S3 frames passed the checks and ended in ValueError 'cannot stream dtype |S3'
    (a traceback) at the first frame."""
    path = _nxtomo_with_frames(tmp_path / "scan.nxs", values)
    with pytest.raises(NexusError, match=r"^/entry/instrument/detector/data in .*scan.nxs holds ") as caught:
        NexusScan(path)
    assert f"holds {shown}: the frames must be integer or floating-point pixels" in str(caught.value)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float16, np.float64])
def test_integer_and_floating_frames_are_read(tmp_path: Path, dtype: type) -> None:
    path = _nxtomo_with_frames(tmp_path / "scan.nxs", np.ones((3, 3, 4), dtype=dtype))
    with NexusScan(path) as scan:
        assert [frame.data.dtype for frame in scan.frames()] == [np.dtype(dtype)] * 3


def _corrupt_chunk(path: Path, frame: int) -> None:
    """Frames in gzip chunks of one frame each, ``frame``'s a chunk gzip cannot inflate."""
    _nxtomo(path, [2, 1, 0, 0], np.array([0.0, 0.0, 10.0, 20.0]), external=False)
    with h5py.File(path, "a") as f:
        del f["/entry/instrument/detector/data"]
        data = f.create_dataset(
            "/entry/instrument/detector/data",
            data=np.ones((4, 3, 4), dtype=np.uint16),
            chunks=(1, 3, 4),
            compression="gzip",
        )
        data.id.write_direct_chunk((frame, 0, 0), b"not gzip data")


def test_an_unreadable_frame_names_the_file_the_dataset_and_the_frame(tmp_path: Path) -> None:
    """It said only "Can't synchronously read data (filter returned failure during read)"."""
    path = tmp_path / "scan.nxs"
    _corrupt_chunk(path, 2)
    with NexusScan(path) as scan:
        frames = scan.frames()
        assert [next(frames).index, next(frames).index] == [0, 1]
        with pytest.raises(NexusReadError) as caught:
            next(frames)
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot read frame 2 of /entry/instrument/detector/data: "), message
    assert "filter returned failure during read" in message
    # An OSError as h5py's own was: the CLI's one-line error (exit 2), wherever it is read.
    assert isinstance(caught.value, OSError) and isinstance(caught.value, NexusError)


def _check_nexus(tmp_path: Path, path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parameters = tmp_path / "p.json"
    parameters.write_text("{}")
    status = main(["check", str(parameters), "--nexus", str(path)])
    return status, capsys.readouterr().err


def test_check_nexus_of_string_frames_or_an_unreadable_chunk_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    strings = _nxtomo_with_frames(tmp_path / "strings.nxs", STRING_FRAMES)
    status, err = _check_nexus(tmp_path, strings, capsys)
    assert status == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"streamtomo: error: /entry/instrument/detector/data in {strings} holds 3-byte strings (dtype |S3): "
        "the frames must be integer or floating-point pixels"
    )
    broken = tmp_path / "broken.nxs"
    _corrupt_chunk(broken, 3)
    status, err = _check_nexus(tmp_path, broken, capsys)
    assert status == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"streamtomo: error: {broken}: cannot read frame 3 of /entry/instrument/detector/data"), err


def test_replay_nexus_of_string_frames_or_an_unreadable_chunk_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both are found before the scan starts (the file's frames are recorded first, or
    encoded for play)."""
    strings = _nxtomo_with_frames(tmp_path / "strings.nxs", STRING_FRAMES)
    broken = tmp_path / "broken.nxs"
    _corrupt_chunk(broken, 1)
    for path, expected in [
        (strings, f"/entry/instrument/detector/data in {strings} holds 3-byte strings (dtype |S3)"),
        (broken, f"{broken}: cannot read frame 1 of /entry/instrument/detector/data: "),
    ]:
        assert main(["replay", "--nexus", str(path)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith(f"streamtomo: error: {expected}"), err
        # play reads the whole file before it touches the deployment (none listens here)
        nowhere = ["--controller", "http://127.0.0.1:9", "--detector", "tcp://127.0.0.1:9", "--panda", "127.0.0.1:9"]
        assert main(["play", "--nexus", str(path), *nowhere, "--state", str(tmp_path / "none.json")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith(f"streamtomo: error: {expected}"), err


def test_a_repeated_angle_or_a_return_to_zero_takes_no_slot_of_its_own() -> None:
    """A closed turn of 0.1-degree steps with one angle repeated was refused as 'more
    than a turn' (3602 slots over 360.1 degrees); a half turn with a final return to 0
    had a slot too many, one empty and one shared."""
    turn = 0.1 * np.arange(3601)
    assert derive_grid(np.insert(turn, 5, turn[5])) == ScanGrid(0.0, 360.0, 3600)
    assert derive_grid(np.append(turn, 0.0)) == ScanGrid(0.0, 360.0, 3600)
    half = np.linspace(0.0, 180.0, 181)
    assert derive_grid(np.append(half, 0.0)) == ScanGrid(0.0, 181.0, 181)


def test_angles_that_never_change_have_no_grid() -> None:
    with pytest.raises(NexusError, match="all 5 projections have the same angle"):
        derive_grid(np.zeros(5))
    assert derive_grid(np.array([30.0])).n_projections == 1  # one projection: its own slot


def _exchange(path: Path, projections: int = 4, theta_units: str | None = "degrees", darks: bool = True) -> None:
    """An APS Data Exchange file: projections, flats and darks in datasets of their own."""
    with h5py.File(path, "w") as f:
        f["/exchange/data"] = (3000 + np.arange(projections)[:, None, None] + np.zeros((1, 3, 4))).astype(np.uint16)
        f["/exchange/data_white"] = np.full((2, 3, 4), 20000, np.uint16)
        if darks:
            f["/exchange/data_dark"] = np.full((1, 3, 4), 100, np.uint16)
        theta = np.linspace(0.0, 135.0, 4) if theta_units != "radians" else np.radians(np.linspace(0.0, 135.0, 4))
        f["/exchange/theta"] = theta
        if theta_units:
            f["/exchange/theta"].attrs["units"] = theta_units


def test_a_data_exchange_file_streams_darks_flats_then_projections(tmp_path: Path) -> None:
    """APS's layout (tomopy's tooth): no image_key, so the kinds come from the datasets;
    the projections keep their order and angles (radians converted)."""
    path = tmp_path / "aps.h5"
    _exchange(path, theta_units="radians")
    with NexusScan(path) as scan:
        assert scan.n_frames == 7 and scan.frame_shape == (3, 4)
        assert scan.paths.rotation_angle == "/exchange/theta"
        read = list(scan.frames())
        grid = scan.grid()
    assert [f.key for f in read] == [ImageKey.DARK, *[ImageKey.FLAT] * 2, *[ImageKey.PROJECTION] * 4]
    assert [f.index for f in read] == list(range(7))
    np.testing.assert_allclose([f.angle_deg for f in read[3:]], [0.0, 45.0, 90.0, 135.0])
    assert [int(f.data[0, 0]) for f in read] == [100, 20000, 20000, 3000, 3001, 3002, 3003]
    assert grid == ScanGrid(0.0, 180.0, 4)
    no_darks = tmp_path / "no-darks.h5"
    _exchange(no_darks, darks=False)
    with NexusScan(no_darks) as scan:
        assert [f.key for f in scan.frames()][:2] == [ImageKey.FLAT, ImageKey.FLAT]


def test_a_data_exchange_file_whose_parts_do_not_agree_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short-theta.h5"
    _exchange(path, projections=5)  # 4 angles for 5 projections
    with pytest.raises(NexusError, match="4 angles for 5 projections"):
        NexusScan(path)
    other = tmp_path / "other-shape.h5"
    _exchange(other)
    with h5py.File(other, "a") as f:
        del f["/exchange/data_white"]
        f["/exchange/data_white"] = np.zeros((2, 3, 5), np.uint16)
    with pytest.raises(NexusError, match="differ in their frames' shape"):
        NexusScan(other)
    with pytest.raises(NexusError, match=r"is an APS Data Exchange file .* leave --nexus-data"):
        NexusScan(path, rotation_angle="/exchange/theta")  # NXtomo paths: none in this file


def test_a_data_exchange_file_with_averaged_float_darks_and_an_entry_of_metadata(tmp_path: Path) -> None:
    """Darks averaged to float32 beside integer projections: one pixel type for the whole
    stream (the workers refuse a type that changes mid-scan); an /entry with metadata
    only does not hide the frames."""
    path = tmp_path / "mixed.h5"
    _exchange(path)
    with h5py.File(path, "a") as f:
        del f["/exchange/data_dark"]
        f["/exchange/data_dark"] = np.full((1, 3, 4), 100.25, np.float32)
        f.create_group("entry/sample").attrs["NX_class"] = "NXsample"
    with NexusScan(path) as scan:
        read = list(scan.frames())
    assert {f.data.dtype for f in read} == {np.dtype(np.float32)}
    assert read[0].key == ImageKey.DARK and read[0].data[0, 0] == np.float32(100.25)
    assert read[-1].key == ImageKey.PROJECTION and read[-1].data[0, 0] == 3003
