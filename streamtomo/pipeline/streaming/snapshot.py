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

import numpy as np
import numpy.typing as npt

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
