"""Live slice views for continuous rotation: a sliding 180-degree window.

Accumulate mode is :class:`streamtomo.pipeline.reconstruction.fbp.StreamingFBP` (all projections so far,
weighted by their angular interval). For a sample that changes while it keeps
rotating (in situ), the last half turn is what matters: :class:`SlidingWindowFBP`
adds each new projection and subtracts those taken 180 degrees or more before
it (as APS tomostream does), so the view is always the FBP of the latest half
turn at the cost of two backprojections per projection.

Why golden-ratio angles suit accumulate mode: interlaced angles cover the half
turn evenly after any number of projections, so a 10 % preview already shows
the whole object; in-order angles have covered only 10 % of the half turn then
(a limited-angle reconstruction, streaks along the missing directions).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.reconstruction.backends.common import check_center
from streamtomo.pipeline.reconstruction.backprojection import Backend, backproject_into
from streamtomo.pipeline.reconstruction.fbp import weight_partial_sum
from streamtomo.pipeline.reconstruction.filters import ProjectionFilter

FloatArray = npt.NDArray[np.float32]
WINDOW_DEG = 180.0
ANGLE_TOL_DEG = 1e-6


class SlidingWindowFBP:
    """FBP of the projections within the last 180 degrees of a continuous rotation.

    ``add(rows, angle_deg)`` expects angles in acquisition order, rotating
    forward; angles may wrap at 360 (they are unwrapped: each step is taken
    as (angle - previous) mod 360, so steps must stay below 360). Every
    projection in the window counts the same (a regularly stepped rotation),
    so ``result()`` of a full window equals ``fbp`` of those projections.
    Float32 add/subtract round-off grows like sqrt(steps); :meth:`rebuild`
    recomputes the sum from the stored rows if a scan runs for days.
    """

    def __init__(
        self,
        n_cols: int,
        center: float,
        slice_size: int | None = None,
        filter_name: str = "ramp",
        n_slices: int = 1,
        *,
        window_deg: float = WINDOW_DEG,
        backend: Backend = "auto",
    ) -> None:
        if n_slices < 1:
            raise ValueError(f"n_slices must be >= 1, got {n_slices}")
        if not 0.0 < window_deg <= 360.0:
            raise ValueError(f"window_deg must be in (0, 360], got {window_deg}")
        self.filter = ProjectionFilter(n_cols, filter_name)
        self.n_cols = int(n_cols)
        self.center = check_center(center, self.n_cols)
        self.slice_size = self.n_cols if slice_size is None else int(slice_size)
        self.n_slices = int(n_slices)
        self.window_deg = float(window_deg)
        self.backend: Backend = backend
        self._partial = np.zeros((self.n_slices, self.slice_size, self.slice_size), dtype=np.float32)
        # (unwrapped angle, filtered rows) of every projection now in the window, oldest first.
        self._window: deque[tuple[float, FloatArray]] = deque()
        self._last_raw: float | None = None
        self._last_unwrapped = 0.0

    @property
    def n_projections(self) -> int:
        """Projections in the window now."""
        return len(self._window)

    @property
    def angle_range(self) -> tuple[float, float]:
        """(oldest, newest) unwrapped angle in the window, degrees."""
        if not self._window:
            return (math.nan, math.nan)
        return (self._window[0][0], self._window[-1][0])

    def _unwrap(self, angle_deg: float) -> float:
        if self._last_raw is None:
            unwrapped = float(angle_deg)
        else:
            unwrapped = self._last_unwrapped + float(np.mod(angle_deg - self._last_raw, 360.0))
        self._last_raw = float(angle_deg)
        self._last_unwrapped = unwrapped
        return unwrapped

    def add(self, rows: npt.ArrayLike, angle_deg: float) -> int:
        """Add one projection's K rows; returns how many old projections left the window."""
        data = np.asarray(rows, dtype=np.float32)
        if data.ndim == 1 and self.n_slices == 1:
            data = data[None, :]
        if data.shape != (self.n_slices, self.n_cols):
            raise ValueError(f"rows must have shape ({self.n_slices}, {self.n_cols}), got {data.shape}")
        angle = self._unwrap(angle_deg)
        filtered = self.filter.apply(data)
        backproject_into(self._partial, filtered, angle, self.center, 1.0, backend=self.backend)
        self._window.append((angle, filtered))
        removed = 0
        # Keep the window half-open, (newest - 180, newest]: theta and theta + 180 are the same view.
        while self._window and self._window[0][0] <= angle - self.window_deg + ANGLE_TOL_DEG:
            old_angle, old_rows = self._window.popleft()
            backproject_into(self._partial, old_rows, old_angle, self.center, -1.0, backend=self.backend)
            removed += 1
        return removed

    def result(self) -> FloatArray:
        """The (K, N, N) float32 slices of the current window (a new array)."""
        return weight_partial_sum(self._partial, len(self._window))

    def rebuild(self) -> None:
        """Recompute the window's sum from its stored filtered rows (drops round-off)."""
        self._partial.fill(0.0)
        for angle, filtered in self._window:
            backproject_into(self._partial, filtered, angle, self.center, 1.0, backend=self.backend)

    def reset(self) -> None:
        self._partial.fill(0.0)
        self._window.clear()
        self._last_raw = None
        self._last_unwrapped = 0.0
