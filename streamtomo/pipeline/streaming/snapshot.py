"""What the live domain shows, handed from the scan to the domain layout.

The layout reads this, never the scan's internals. The sinogram is the scan's own
storage seen as ``(rows, angles, cols)`` (a view, no copy): the publishers read it
under the reducer's lock, and ``dirty_slots`` says which angle slots changed since
the previous snapshot. The live slices and the sweep come as unweighted sums (the
scan's own arrays, or a fresh one in window mode) and the weight that turns them
into attenuation, only when they changed since the previous snapshot: the layout
writes ``sum * weight`` straight into the published array, one pass, no temporaries.

The sums change when a worker's partial sum is added (every few dozen projections
per worker); the weight ``pi / 2n`` with every projection placed. Rewriting the
published slices and sweep for a new weight alone (48 MB at 1024^2, every publish)
cost the reducer more than placing the projections, so a new weight alone is
written at most every :data:`REWEIGHT_INTERVAL_S` (or the rewrite interval below, if
longer). New sums are written at most every
:meth:`~streamtomo.pipeline.streaming.live_geometry.LiveSliceGeometry.rewrite_interval`
(a publish interval for small slices, 0.75 s at 1024^2): with many workers a new sum
comes every publish, and each rewrite is 48-201 MB for the reducer to write and the
HSDS mirror to send. A new scan state, a new ledger (new settings) and (in window
mode) a new set of window blocks are written at the next publish.
``n_projections`` is the count the published slices are weighted with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from streamtomo.pipeline.streaming.live_scan import LiveScan

FloatArray = npt.NDArray[np.float32]
REWEIGHT_INTERVAL_S = 2.0  # a new weight alone (no new sums) is published at most this often


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
    snap.center = float(scan.geometry.center)
    published = scan.published
    now = time.monotonic()
    window = ledger.window_blocks() if scan.state == "running" else None
    rewrite = scan.geometry.rewrite_interval(scan.config.publish_interval)
    # The count the slices are weighted with: in window mode the window's, not the scan's
    # (n_projections said 36 of slices weighted as 18).
    written = ProductWrite((ledger.serial, scan.state, window), ledger.version, scan.slices_projections(), now)
    if _due(published, "slices", written, rewrite):
        found = scan.slices_sum()
        if found is not None:
            snap.slices_sum, snap.slices_weight = found
    snap.n_projections = published["slices"].n_projections
    if ledger.sweep_sum is not None:
        snap.sweep_centers = scan.sweep_centers()
        written = ProductWrite((ledger.serial, scan.state), ledger.sweep_version, scan.n_projections, now)
        if _due(published, "sweep", written, rewrite):
            found = scan.sweep_sum()
            if found is not None:
                snap.sweep_sum, snap.sweep_weight = found
    snap.volume = scan.volume
    snap.volume_done = scan.volume_done
    return snap


@dataclass(frozen=True)
class ProductWrite:
    """What a product's last write showed, and when."""

    identity: object  # the ledger, the scan's state, the window's blocks: a change is written at once
    version: int  # of its sums
    n_projections: int  # its weight
    at: float


def _due(published: dict[str, ProductWrite], name: str, now: ProductWrite, rewrite_interval: float) -> bool:
    """Whether a product is written now: always when its identity changed; for new sums
    once the last write is ``rewrite_interval`` old; for a new weight alone once it is
    :data:`REWEIGHT_INTERVAL_S` old, and ``rewrite_interval``. Records the write."""
    last = published.get(name)
    if last is not None and last.identity == now.identity:
        age = now.at - last.at
        if last.version != now.version:
            if age < rewrite_interval:
                return False
        elif last.n_projections == now.n_projections or age < max(REWEIGHT_INTERVAL_S, rewrite_interval):
            return False
    published[name] = now
    return True
