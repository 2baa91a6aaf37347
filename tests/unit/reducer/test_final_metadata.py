"""What the final file says about itself (streamtomo.reducer.final_metadata)."""

from __future__ import annotations

import datetime
from pathlib import Path

import h5py
import numpy as np

from streamtomo.reducer.final_metadata import add_final_metadata, iso_time


def _file(path: Path, done: int, rows: int = 4) -> h5py.File:
    """A file as write_final_file makes it before describing it: of a volume of ``rows``
    planned slices, the ``done`` computed."""
    f = h5py.File(path, "w")
    entry = f.create_group("entry")
    entry.attrs["default"] = "reconstruction"
    f.create_group("entry/reconstruction")
    volume = f.create_dataset("entry/reconstruction/volume", data=np.ones((min(done, rows), 8, 8), np.float32))
    volume.attrs["detector_rows"] = [10, 11, 12, 13][:rows]
    f.create_dataset("entry/status/volume_slices_done", data=np.int64(done))
    return f


def test_a_finished_volume_is_the_default_plot_and_the_scan_is_named(tmp_path: Path) -> None:
    with _file(tmp_path / "a.nxs", done=4) as f:
        add_final_metadata(f, "5f1e-uuid", 1_796_532_361.5)
    with h5py.File(tmp_path / "a.nxs", "r") as f:
        assert f["entry/entry_identifier"].asstr()[()] == "5f1e-uuid"
        ended = datetime.datetime.fromisoformat(f["entry/end_time"].asstr()[()])
        assert ended == datetime.datetime(2026, 12, 6, 4, 46, 1, 500000, tzinfo=datetime.UTC)
        assert f["entry"].attrs["default"] == "volume"
        group = f["entry/volume"]
        assert group.attrs["NX_class"] == "NXdata" and group.attrs["signal"] == "data"
        assert list(group.attrs["axes"]) == ["detector_row", ".", "."]
        assert group["data"].id == f["entry/reconstruction/volume"].id  # the same dataset: a hard link
        assert list(group["detector_row"][()]) == [10, 11, 12, 13]


def test_the_volume_takes_the_slices_pixel_axes_where_they_fit(tmp_path: Path) -> None:
    """silx and h5web label the volume's images with the live slices' y and x (pixels
    from the rotation axis); an axis of another length is not the volume's."""
    from streamtomo.reducer.domain_layout import slice_axis

    with _file(tmp_path / "axes.nxs", done=4) as f:
        f["entry/reconstruction/y"] = slice_axis(8)
        f["entry/reconstruction/x"] = slice_axis(16)  # another size: not this volume's
        add_final_metadata(f, "uuid", 0.0)
    with h5py.File(tmp_path / "axes.nxs", "r") as f:
        group = f["entry/volume"]
        assert list(group.attrs["axes"]) == ["detector_row", "y", "."]
        assert group["y"].id == f["entry/reconstruction/y"].id and "x" not in group
        assert list(group["y"][()]) == [-4, -3, -2, -1, 0, 1, 2, 3]


def test_a_volume_cut_short_says_so_and_leaves_the_default_alone(tmp_path: Path) -> None:
    with _file(tmp_path / "b.nxs", done=1) as f:
        add_final_metadata(f, "uuid", 0.0)
    with h5py.File(tmp_path / "b.nxs", "r") as f:
        assert "volume" not in f["entry"]
        assert f["entry"].attrs["default"] == "reconstruction"
        volume = f["entry/reconstruction/volume"]
        assert volume.shape == (1, 8, 8)
        assert list(volume.attrs["detector_rows"]) == [10]  # each slice still names its row
        assert int(volume.attrs["slices_done"]) == 1 and int(volume.attrs["slices_planned"]) == 4
        assert "stopped after 1 of 4 slices: only those are here" in volume.attrs["note"]


def test_times_are_iso_8601_with_their_offset() -> None:
    assert iso_time(0.0) == "1970-01-01T00:00:00+00:00"
