"""What the live domain shows, handed from the scan to the domain layout.

The layout reads this, never the scan's internals. The sinogram is the scan's own
storage seen as ``(rows, angles, cols)`` (a view, no copy): the publishers read it
under the reducer's lock, and ``dirty_slots`` says which angle slots changed since
the previous snapshot. The live slices and the sweep come as unweighted sums (the
scan's own arrays, or a fresh one in window mode) and the weight that turns them
into attenuation, only when they changed since the previous snapshot: the layout
writes ``sum * weight`` straight into the published array, one pass, no temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from streamtomo.pipeline.streaming.live_scan import LiveScan

FloatArray = npt.NDArray[np.float32]


@dataclass
class ScanSnapshot:
    state: str
    reason: str
    status: dict[str, int | float | str]
    rejected: dict[str, int]
    lost_frames: list[tuple[int, int]]
    parameters: str  # the effective configuration, JSON
    # None until the first frame fixed the detector
    sinogram: FloatArray | None = None
    dirty_slots: list[int] = field(default_factory=list)
    angles: npt.NDArray[np.float64] | None = None
    frames_per_angle: npt.NDArray[np.int32] | None = None
    sinogram_rows: npt.NDArray[np.int64] | None = None
    slice_rows: npt.NDArray[np.int64] | None = None
    slices_shape: tuple[int, int, int] = (0, 0, 0)
    slices_sum: FloatArray | None = None  # None: unchanged since the previous snapshot
    slices_weight: float = 1.0
    n_projections: int = 0
    center: float = 0.0
    sweep_sum: FloatArray | None = None  # None: unchanged (or no sweep)
    sweep_weight: float = 1.0
    sweep_centers: npt.NDArray[np.float64] | None = None
    volume: FloatArray | None = None  # allocated when the volume starts, filled slice by slice
    volume_done: int = 0


def take_snapshot(scan: LiveScan) -> ScanSnapshot:
    """What the live domain shows now; takes the sinogram slots changed since the last
    snapshot, and the sums only if they changed (its one reader is the publisher)."""
    status = scan.status()
    snap = ScanSnapshot(
        state=str(status.pop("state")),
        reason=scan.reason,
        status=status,
        rejected=dict(sorted(scan.admission.rejected.items())),
        lost_frames=scan.lost_frames(),
        parameters=scan.config.to_json(),
    )
    if scan.sinogram is None or scan.geometry is None or scan.ledger is None:
        return snap
    ledger = scan.ledger
    snap.sinogram = scan.sinogram.data
    snap.dirty_slots = scan.sinogram.take_dirty_slots()
    snap.angles = scan.sinogram.angles()
    snap.frames_per_angle = scan.sinogram.counts.copy()
    snap.sinogram_rows = scan.geometry.sinogram_rows.astype(np.int64)
    snap.slice_rows = scan.geometry.slice_rows.astype(np.int64)
    k, n, _ = ledger.live_sum.shape
    snap.slices_shape = (k, n, n)
    snap.n_projections = scan.n_projections
    snap.center = float(scan.geometry.center)
    published = scan.published
    slices_key = (id(ledger), ledger.version, scan.n_projections, scan.state)
    if slices_key != published.get("slices"):
        published["slices"] = slices_key
        found = scan.slices_sum()
        if found is not None:
            snap.slices_sum, snap.slices_weight = found
    if ledger.sweep_sum is not None:
        snap.sweep_centers = scan.sweep_centers()
        sweep_key = (id(ledger), ledger.sweep_version, scan.n_projections, scan.state)
        if sweep_key != published.get("sweep"):
            published["sweep"] = sweep_key
            found = scan.sweep_sum()
            if found is not None:
                snap.sweep_sum, snap.sweep_weight = found
    snap.volume = scan.volume
    snap.volume_done = scan.volume_done
    return snap
