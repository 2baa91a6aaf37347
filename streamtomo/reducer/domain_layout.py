"""The live domain's layout, in one place (README "Domain layout" documents it).

::

    /                              @default=entry
    /entry                         NXentry, @default=reconstruction
        program_name    str     "streamtomo", @version
        start_time      str     ISO 8601 (UTC), when this domain was made
    /entry/sinogram                NXdata, @signal=data
        data            float32 (rows, angles, cols)
        rotation_angle  float64 (angles,) degrees, measured (nominal where empty)
        frames_per_angle int32  (angles,) 0 where the angle is still missing
        detector_row    int64   (rows,)
    /entry/reconstruction          NXdata, @signal=data, @axes=[slice_rows, y, x]
        data            float32 (slices, y, x), one slice per chunk
        slice_rows      int64   (slices,) detector row of each slice
        y, x            float64 (N,) pixels from the rotation axis (j - N//2)
        n_projections   int64   scalar, projections in the slices so far
        parameters      str     effective configuration (JSON)
        center          float64 the rotation axis the slices use
        cor_sweep       NXdata: data (candidates, y, x), centers (candidates,)
        volume          float32 (rows, y, x), end of scan, filled slice by slice
    /entry/status                  NXcollection
        state (waiting, running, reconstructing, finished, stopped, failed), reason
        (why it stopped or failed, and the frames that never came), frames_received, frames_rejected, darks, flats, projections,
        missing_angles, pending_projections, frames_lost, volume_slices_done,
        settings_pending (1 from a live change's 202 until the slices are rebuilt),
        rejected (JSON counts per reason), lost_frames (JSON [first, last] ranges of
        frames that never came), publisher_dropped, pixels_repaired (dead or saturated
        pixel values replaced by their row neighbours' median before -log, over the
        projections so far), angles_joined (projections whose event carried another
        frame's PandA row, joined with their own: the streams slipped),
        results_after_end, final_file (where the scan's final file goes, "" if the
        deployment writes none), last_update (unix time), generation
        final_file_written (1: complete on disk), final_file_error (why it was not
        written): made once the file's writing has ended, after the scan

The last two are not in the file (written before they exist), nor in an HSDS mirror
that was complete before them: where they are, they say how the writing went.

The final file adds what only it needs (:mod:`streamtomo.reducer.final_metadata`).

The layout reads a :class:`ScanSnapshot`, never the scan's internals. The sinogram
dataset shares the scan's storage (an angle-major array seen as (rows, angles, cols)):
the in-memory server serves it without copies and the HSDS writer copies only the
chunks of the slots that changed. Every final product is written before ``state``
says ``finished``, in the same generation.

Values that change are datasets (h5pyd 1.0 cannot overwrite attributes); readers
poll ``/entry/status/generation`` and re-read when it changes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from streamtomo.hsds_bridge.domain import Domain, DomainDataset, DomainGroup
from streamtomo.pipeline.streaming.prefault import prefaulted_zeros
from streamtomo.pipeline.streaming.snapshot import ScanSnapshot
from streamtomo.reducer.final_metadata import VOLUME_PATH, iso_time

STATUS_INTS = (
    "frames_received",
    "frames_rejected",
    "darks",
    "flats",
    "projections",
    "missing_angles",
    "pending_projections",
    "publisher_dropped",
    "frames_lost",
    "volume_slices_done",
    "settings_pending",
    "pixels_repaired",
    "angles_joined",
    "results_after_end",
)
# Made once the final file's writing has ended (see the module docstring).
FINAL_FILE_OUTCOME = ("final_file_written", "final_file_error")
CHUNK_TARGET_BYTES = 2 << 20


def sinogram_chunks(rows: int, angles: int, cols: int) -> tuple[int, int, int]:
    """Blocks of rows x angles x all columns, at most ~2 MiB.

    A new projection dirties one angle block of every row block; reading one
    detector row reads ``angles / block`` chunks. Whole-row chunks would make each
    projection rewrite the full stack.
    """
    block = 16
    while block > 1 and block * block * cols * 4 > CHUNK_TARGET_BYTES:
        block //= 2
    return (min(rows, block), min(angles, block), cols)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamtomo")
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        return "unknown"


def new_domain(name: str) -> Domain:
    """The domain before the first frame: status only."""
    domain = Domain(name, {"default": "entry"})
    domain.create_group("/entry", {"NX_class": "NXentry", "default": "reconstruction"})
    domain.create_dataset("/entry/program_name", "streamtomo", attrs={"version": _version()})
    domain.create_dataset("/entry/start_time", iso_time(time.time()))
    domain.create_group("/entry/status", {"NX_class": "NXcollection"})
    domain.create_dataset("/entry/status/state", "waiting")
    domain.create_dataset("/entry/status/reason", "")
    for name_ in STATUS_INTS:
        domain.create_dataset(f"/entry/status/{name_}", np.int64(0))
    domain.create_dataset("/entry/status/final_file", "")
    domain.create_dataset("/entry/status/rejected", "{}")
    domain.create_dataset("/entry/status/lost_frames", "[]")
    domain.create_dataset(
        "/entry/status/last_update",
        np.float64(time.time()),
        attrs={"units": "s", "long_name": "seconds since 1970 (UTC)"},
    )
    domain.create_dataset("/entry/status/generation", np.int64(0))
    return domain


def _unfilled_angles(snap: ScanSnapshot) -> npt.NDArray[np.bool_] | None:
    """The sinogram's angle slots that read as zeros, shaped to broadcast over
    (rows, angles, cols): those the published ``frames_per_angle`` says are empty. The
    memory there holds an earlier scan's rows, or rows placed since this publish (the
    dataset shares the scan's array, which fills on between publishes: one generation
    read twice gave two sinograms, with rows where its counts said none)."""
    if snap.frames_per_angle is None:
        return None
    unfilled: npt.NDArray[np.bool_] = snap.frames_per_angle == 0
    if not unfilled.any():
        return None
    return unfilled[np.newaxis, :, np.newaxis]


def add_scan_datasets(domain: Domain, snap: ScanSnapshot) -> None:
    """Create sinogram and reconstruction datasets once the detector is known.

    The sinogram dataset shares the scan's array: the in-memory server serves it
    without copies (both sides hold ``domain.lock``).
    """
    assert snap.sinogram is not None
    assert (
        snap.angles is not None
        and snap.frames_per_angle is not None
        and snap.sinogram_rows is not None
        and snap.slice_rows is not None
    )
    rows, angles, cols = snap.sinogram.shape
    units = {"units": "degree"}
    domain.create_group(
        "/entry/sinogram", {"NX_class": "NXdata", "signal": "data", "axes": ["detector_row", "rotation_angle", "."]}
    )
    domain.create_dataset(
        "/entry/sinogram/data",
        snap.sinogram,
        share=True,
        chunks=sinogram_chunks(rows, angles, cols),
        attrs={"long_name": "-log transmission", "interpretation": "image"},
    )
    domain.create_dataset("/entry/sinogram/rotation_angle", snap.angles, attrs=units)
    domain.create_dataset(
        "/entry/sinogram/frames_per_angle",
        snap.frames_per_angle,
        # The sinogram's zero rows look like data: this says which they are.
        attrs={"long_name": "projections summed in this angle slot (0: none, its sinogram rows are zeros)"},
    )
    domain.create_dataset("/entry/sinogram/detector_row", snap.sinogram_rows)
    k, n, _ = snap.slices_shape
    domain.create_group(
        "/entry/reconstruction", {"NX_class": "NXdata", "signal": "data", "axes": ["slice_rows", "y", "x"]}
    )
    _image_stack(
        domain,
        "/entry/reconstruction/data",
        (k, n, n),
        {"long_name": "attenuation per pixel", "interpretation": "image"},
    )
    domain.create_dataset("/entry/reconstruction/slice_rows", snap.slice_rows)
    for name in SLICE_AXES:
        domain.create_dataset(f"/entry/reconstruction/{name}", slice_axis(n), attrs=SLICE_AXIS_ATTRS)
    domain.create_dataset("/entry/reconstruction/n_projections", np.int64(0))
    domain.create_dataset("/entry/reconstruction/center", np.float64(snap.center), attrs={"units": "pixel"})
    domain.create_dataset("/entry/reconstruction/parameters", snap.parameters)


# The slices' pixel axes (NXdata axes y, x of /entry/reconstruction): where each pixel
# lies from the rotation axis, in (binned) detector pixels, as the backprojection puts
# it (pixel j at j - N//2). silx and h5web label the images with them.
SLICE_AXES = ("y", "x")
SLICE_AXIS_ATTRS = {"units": "pixel", "long_name": "distance from the rotation axis (detector pixels, binned)"}


def slice_axis(n: int) -> npt.NDArray[np.float64]:
    """The positions of an N-pixel slice's rows (or columns) from the rotation axis."""
    return np.arange(n, dtype=np.float64) - n // 2


def _image_stack(domain: Domain, path: str, shape: tuple[int, ...], attrs: dict[str, Any]) -> DomainDataset:
    """A (K, N, N) float32 stack of zeros, one image per chunk, on memory mapped in the
    background (prefaulted_zeros, shared with the domain): ``np.full`` faulted every
    page in the publish that made it."""
    n = shape[-1]
    return domain.create_dataset(path, prefaulted_zeros(shape), share=True, chunks=(1, n, n), attrs=attrs)


def has_scan_datasets(domain: Domain) -> bool:
    try:
        domain.get("/entry/sinogram/data")
    except KeyError:
        return False
    return True


def _set(domain: Domain, path: str, value: Any) -> bool:
    """Write a scalar if it differs; returns whether it changed."""
    ds = domain.dataset(path)
    if ds.array[()] == value:
        return False
    ds.set_scalar(value)
    return True


def _replace_if_shape_differs(
    domain: Domain, path: str, values: np.ndarray, attrs: dict[str, Any] | None = None
) -> bool:
    """Write ``values`` (a whole dataset); recreate it when the shape changed."""
    try:
        ds = domain.dataset(path)
    except KeyError:
        ds = None
    if ds is None or ds.shape != values.shape:
        chunks = (1, *values.shape[1:]) if values.ndim == 3 else None
        domain.create_dataset(
            path,
            values.astype(np.float32 if values.dtype.kind == "f" and values.ndim == 3 else values.dtype),
            chunks=chunks,
            attrs=attrs,
        )
        return True
    if np.array_equal(ds.array, values):
        return False
    ds.write((slice(None),), values)
    return True


def _write_weighted(ds: DomainDataset, total: np.ndarray, weight: float) -> None:
    """``ds[...] = total * weight`` in one pass, every slice marked for the mirrors."""
    np.multiply(total, np.float32(weight), out=ds.array)
    ds.mark_all_dirty()


def _update_sweep(domain: Domain, snap: ScanSnapshot) -> bool:
    """The live centre-of-rotation strip: NXdata with the candidate centres as axis."""
    if snap.sweep_sum is None or snap.sweep_centers is None:
        return False
    try:
        domain.get("/entry/reconstruction/cor_sweep")
    except KeyError:
        domain.create_group(
            "/entry/reconstruction/cor_sweep", {"NX_class": "NXdata", "signal": "data", "axes": ["centers", ".", "."]}
        )
    _replace_if_shape_differs(domain, "/entry/reconstruction/cor_sweep/centers", snap.sweep_centers, {"units": "pixel"})
    path = "/entry/reconstruction/cor_sweep/data"
    try:
        ds = domain.dataset(path)
    except KeyError:
        ds = None
    if ds is None or ds.shape != snap.sweep_sum.shape:
        ds = _image_stack(domain, path, snap.sweep_sum.shape, {"long_name": "attenuation per pixel"})
    _write_weighted(ds, snap.sweep_sum, snap.sweep_weight)
    return True


def _volume_unwritten(rows: int, done: int) -> npt.NDArray[np.bool_] | None:
    """The volume's slices at or past ``done``, shaped to broadcast over (rows, y, x):
    the volume job writes them outside the lock, so a reader must not see them torn
    (nor an earlier scan's slices in reused memory). None once every slice is done."""
    if done >= rows:
        return None
    return (np.arange(rows) >= done)[:, np.newaxis, np.newaxis]


def _update_volume(domain: Domain, snap: ScanSnapshot) -> bool:
    """The volume shares the reducer's array; slices done since the last update are
    marked, and those not done yet read as zeros."""
    if snap.volume is None or snap.sinogram_rows is None:
        return False
    path = VOLUME_PATH
    try:
        ds = domain.dataset(path)
    except KeyError:
        ds = domain.create_dataset(
            path,
            snap.volume,
            share=True,
            chunks=(1, *snap.volume.shape[1:]),
            attrs={
                "long_name": "attenuation per pixel",
                "interpretation": "image",
                "detector_rows": [int(r) for r in snap.sinogram_rows],
            },
        )
        ds.take_dirty()  # nothing computed yet: its slices are sent as they are done
    if ds.array is not snap.volume:  # a new volume (auto centre, settings): one slice per chunk
        # Every chunk dirty: a mirror's copy of the same shape holds the last volume.
        ds.replace_array(snap.volume, chunks=(1, *snap.volume.shape[1:]))
    ds.unwritten = _volume_unwritten(snap.volume.shape[0], snap.volume_done)
    done_before = int(domain.dataset("/entry/status/volume_slices_done").array[()])
    if snap.volume_done == done_before:
        return False
    for k in range(min(done_before, snap.volume_done), snap.volume_done):
        ds.mark_dirty((k,))
    return True


def update_domain(
    domain: Domain,
    snap: ScanSnapshot,
    extra_status: dict[str, int] | None = None,
    final_file: str = "",
    final_outcome: tuple[bool, str] | None = None,
) -> bool:
    """Copy the scan's state into the domain (caller holds ``domain.lock``).

    Bumps ``generation`` only when something changed, so idle readers re-read nothing.
    Returns whether it did.
    """
    changed = False
    if snap.sinogram is not None:
        if not has_scan_datasets(domain):
            add_scan_datasets(domain, snap)
            changed = True
        data = domain.dataset("/entry/sinogram/data")
        if snap.dirty_slots and data.array is not snap.sinogram:  # a new scan's arrays
            rows, angles, cols = snap.sinogram.shape
            # Marks every chunk dirty; chunks as at creation, for the new shape.
            data.replace_array(snap.sinogram, chunks=sinogram_chunks(rows, angles, cols))
        if data.array is snap.sinogram:
            data.unwritten = _unfilled_angles(snap)
        if snap.dirty_slots:
            changed = True
            for slot in snap.dirty_slots:
                data.mark_dirty((slice(None), slot))
            domain.dataset("/entry/sinogram/rotation_angle").write((slice(None),), snap.angles)
            domain.dataset("/entry/sinogram/frames_per_angle").write((slice(None),), snap.frames_per_angle)
        recon = domain.dataset("/entry/reconstruction/data")
        if snap.slices_shape != recon.shape:  # live slice rows changed, and their number
            recon = _image_stack(domain, "/entry/reconstruction/data", snap.slices_shape, recon.attrs)
            changed = True
        # Not only with the number of slices: other rows, as many, kept the old rows' labels
        # (the NXdata axis, the mirror and the final file said the slices were other rows).
        if snap.slice_rows is not None:
            changed |= _replace_if_shape_differs(domain, "/entry/reconstruction/slice_rows", snap.slice_rows)
        axis = slice_axis(snap.slices_shape[-1])  # a live slice_size change: other pixels
        for name in SLICE_AXES:
            changed |= _replace_if_shape_differs(domain, f"/entry/reconstruction/{name}", axis, SLICE_AXIS_ATTRS)
        if snap.slices_sum is not None:
            _write_weighted(recon, snap.slices_sum, snap.slices_weight)
            changed = True
        changed |= _set(domain, "/entry/reconstruction/n_projections", np.int64(snap.n_projections))
        changed |= _set(domain, "/entry/reconstruction/center", np.float64(snap.center))
        changed |= _update_sweep(domain, snap)
        changed |= _update_volume(domain, snap)
        changed |= _set(domain, "/entry/reconstruction/parameters", snap.parameters)
    status = dict(snap.status)
    for key, value in (extra_status or {}).items():
        status[key] = value
    for key in STATUS_INTS:
        changed |= _set(domain, f"/entry/status/{key}", np.int64(int(status.get(key, 0))))
    changed |= _set(domain, "/entry/status/final_file", final_file)
    if final_outcome is not None:
        written, error = final_outcome
        status_group = domain.get("/entry/status")
        if isinstance(status_group, DomainGroup) and "final_file_written" not in status_group.children:
            domain.create_dataset("/entry/status/final_file_written", np.int64(0))
            domain.create_dataset("/entry/status/final_file_error", "")
            changed = True
        changed |= _set(domain, "/entry/status/final_file_written", np.int64(int(written)))
        changed |= _set(domain, "/entry/status/final_file_error", error)
    changed |= _set(domain, "/entry/status/rejected", json.dumps(snap.rejected))
    changed |= _set(domain, "/entry/status/lost_frames", json.dumps(snap.lost_frames))
    changed |= _set(domain, "/entry/status/reason", snap.reason)
    # The state last: a reader that sees 'finished' finds every final product in place.
    changed |= _set(domain, "/entry/status/state", snap.state)
    if changed:
        domain.dataset("/entry/status/last_update").set_scalar(np.float64(time.time()))
        domain.dataset("/entry/status/generation").set_scalar(np.int64(domain.commit()))
    return changed
