"""What the final NeXus file says about itself beyond the live domain's layout.

The live domain is the scan as it runs; the file is what a scientist takes home and
opens later, renamed or copied, in silx, h5web or a script. So the file also names
the scan it is (``/entry/entry_identifier``, the dranspose mapping uuid) and when it
ended (``/entry/end_time``, ISO 8601 with its time zone; ``start_time``,
``program_name`` and its version are in the domain from the start), and once every
slice of the end-of-scan volume is done, its default plot is the volume
(``/entry/volume``, an NXdata whose ``data`` is a hard link to
``/entry/reconstruction/volume``), not the five live slices. A volume cut short (a
cancelled job, a scan that failed meanwhile) keeps the live slices as the default and
says on the dataset how many of its slices were computed: the rest are zeros.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import h5py

VOLUME = "reconstruction/volume"


def iso_time(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 in UTC, with its offset (NeXus NX_DATE_TIME)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


def add_final_metadata(f: h5py.File, identifier: str, ended: float) -> None:
    """Into ``f``, an open final file with the domain's nodes in it (before the large
    datasets' chunks are written: a hard link only names a dataset)."""
    import h5py

    text = h5py.string_dtype()
    entry = f["entry"]
    entry.create_dataset("entry_identifier", data=identifier, dtype=text)
    entry.create_dataset("end_time", data=iso_time(ended), dtype=text)
    volume = entry.get(VOLUME)
    if not isinstance(volume, h5py.Dataset):
        return
    status = entry.get("status/volume_slices_done")
    done = int(status[()]) if isinstance(status, h5py.Dataset) else 0
    if done < volume.shape[0]:
        volume.attrs["slices_done"] = np.int64(done)
        volume.attrs["note"] = f"slices {done} to {volume.shape[0] - 1} were not computed: zeros"
        return
    group = entry.create_group("volume")
    group.attrs["NX_class"] = "NXdata"
    group.attrs["signal"] = "data"
    group.attrs["axes"] = np.array(["detector_row", ".", "."], dtype=text)
    group.attrs["title"] = "end-of-scan volume"
    group["data"] = volume  # a hard link: the same dataset, not a copy
    rows = volume.attrs.get("detector_rows")
    row_numbers = np.asarray(rows if rows is not None else np.arange(volume.shape[0]), dtype=np.int64)
    group.create_dataset("detector_row", data=row_numbers)
    entry.attrs["default"] = "volume"
