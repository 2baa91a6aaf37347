"""What the final NeXus file says about itself beyond the live domain's layout.

The live domain is the scan as it runs; the file is what a scientist takes home and
opens later, renamed or copied, in silx, h5web or a script. So the file also names
the scan it is (``/entry/entry_identifier``, the dranspose mapping uuid) and when it
ended (``/entry/end_time``, ISO 8601 with its time zone; ``start_time``,
``program_name`` and its version are in the domain from the start), and once every
slice of the end-of-scan volume is done, its default plot is the volume
(``/entry/volume``, an NXdata whose ``data`` is a hard link to
``/entry/reconstruction/volume``), not the five live slices. A volume cut short (a
cancelled job, an engine error) holds only the slices computed, each still named by
its ``detector_rows`` entry, says so on the dataset, and leaves the live slices as the
default; a volume with no slice computed is not in the file. A file of the planned
shape held zeros for the rest: at 2048^3 a volume stopped at once wrote 34 GB of
zeros, and a reader that missed the note took them for data.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import h5py

    from streamtomo.hsds_bridge.domain import Domain

VOLUME = "reconstruction/volume"
VOLUME_PATH = f"/entry/{VOLUME}"
SLICES_DONE_PATH = "/entry/status/volume_slices_done"


def write_final_file(domain: Domain, path: str | Path, identifier: str, ended: float) -> Path:
    """``domain`` as a scan's final NeXus file at ``path``: the scan it is
    (``identifier``), when it ended (``ended``, seconds since the epoch), and of the
    end-of-scan volume only the slices computed."""
    from streamtomo.hsds_bridge.nexus_file import write_nexus

    with domain.lock:
        try:
            done = int(domain.dataset(SLICES_DONE_PATH).array[()])
            leading = {VOLUME_PATH: done} if done < domain.dataset(VOLUME_PATH).shape[0] else {}
        except KeyError:  # no volume
            leading = {}
    final = Path(path).absolute()
    return write_nexus(
        domain, path, describe=lambda f: add_final_metadata(f, identifier, ended, final), leading=leading
    )


def iso_time(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 in UTC, with its offset (NeXus NX_DATE_TIME)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


def add_final_metadata(f: h5py.File, identifier: str, ended: float, path: Path | None = None) -> None:
    """Into ``f``, an open final file with the domain's nodes in it (before the large
    datasets' chunks are written: a hard link only names a dataset). ``path``: where it
    goes, named in ``status/final_file`` where the domain names none (``--out``)."""
    import h5py

    text = h5py.string_dtype()
    entry = f["entry"]
    entry.create_dataset("entry_identifier", data=identifier, dtype=text)
    entry.create_dataset("end_time", data=iso_time(ended), dtype=text)
    named = entry.get("status/final_file")
    if path is not None and isinstance(named, h5py.Dataset) and not named.asstr()[()]:
        del entry["status/final_file"]
        entry["status"].create_dataset("final_file", data=str(path), dtype=text)
    projections = entry.get("status/projections")
    if isinstance(projections, h5py.Dataset) and int(projections[()]) == 0:
        # Nothing was reduced (every frame refused, say): the slices, sinogram and sweep
        # are the zeros they started as, and the default chain opened them as the
        # scan's result in silx and h5web. The status says what happened.
        if "default" in entry.attrs:
            del entry.attrs["default"]
        return
    volume = entry.get(VOLUME)
    if not isinstance(volume, h5py.Dataset):
        return
    status = entry.get("status/volume_slices_done")
    done = int(status[()]) if isinstance(status, h5py.Dataset) else 0
    rows = volume.attrs.get("detector_rows")
    planned = len(rows) if rows is not None else volume.shape[0]
    if done < planned:
        if rows is not None:
            volume.attrs["detector_rows"] = np.asarray(rows)[: volume.shape[0]]
        volume.attrs["slices_done"] = np.int64(done)
        volume.attrs["slices_planned"] = np.int64(planned)
        volume.attrs["note"] = (
            f"the end-of-scan volume stopped after {done} of {planned} slices: only those are here "
            "(detector_rows names the row of each)"
        )
        return
    group = entry.create_group("volume")
    group.attrs["NX_class"] = "NXdata"
    group.attrs["signal"] = "data"
    # The live slices' pixel axes where the volume's slices have their size (hard links).
    pixel_axes = [name for name, size in zip(("y", "x"), volume.shape[1:], strict=True) if _axis_of(entry, name, size)]
    axes = ["detector_row", *(name if name in pixel_axes else "." for name in ("y", "x"))]
    group.attrs["axes"] = np.array(axes, dtype=text)
    group.attrs["title"] = "end-of-scan volume"
    group["data"] = volume  # a hard link: the same dataset, not a copy
    for name in pixel_axes:
        group[name] = entry[f"reconstruction/{name}"]
    rows = volume.attrs.get("detector_rows")
    row_numbers = np.asarray(rows if rows is not None else np.arange(volume.shape[0]), dtype=np.int64)
    group.create_dataset("detector_row", data=row_numbers)
    entry.attrs["default"] = "volume"


def _axis_of(entry: h5py.Group, name: str, size: int) -> bool:
    """Whether the live slices' pixel axis ``name`` is in the file with ``size`` values."""
    import h5py

    axis = entry.get(f"reconstruction/{name}")
    return isinstance(axis, h5py.Dataset) and axis.shape == (size,)
