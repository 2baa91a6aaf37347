"""Filtered backprojection: streaming accumulation, weighting, offline reference.

Scale convention (same as scikit-image ``iradon``): input rows are line
integrals in detector-pixel units (-log of the normalised transmission); the
result is the attenuation per pixel. A complete scan of n equally spaced
projections over 180 degrees is weighted by pi/(2n) per projection: the
angular step pi/n times 1/2, which undoes the factor 2 built into the ramp
(see :mod:`streamtomo.pipeline.reconstruction.filters`).

Streaming splits this in two so workers can run independently:

* each worker keeps an unweighted partial sum of backprojections
  (:class:`StreamingFBP`, ``.partial`` and ``.n_projections``);
* whoever holds the (summed) partials applies :func:`weight_partial_sum`,
  which scales by pi/(2 * n_projections). For a scan still in progress this
  keeps the preview's grey levels stable; once complete it equals offline FBP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.reconstruction.backprojection import Backend, backproject_into
from streamtomo.pipeline.reconstruction.filters import ProjectionFilter

FloatArray = npt.NDArray[np.float32]

DUPLICATE_TOL_DEG = 1e-3
MAX_GAP_FACTOR = 5.0


def pi_over_2n(n_projections: int) -> float:
    """The weight of an unweighted backprojection sum of n projections (0 for none)."""
    return math.pi / (2.0 * n_projections) if n_projections > 0 else 0.0


def weight_partial_sum(partial: npt.ArrayLike, n_projections: int) -> FloatArray:
    """Scale an unweighted backprojection sum of ``n_projections`` to attenuation.

    Partial sums from several workers may be added first (with their
    projection counts) and weighted once. Returns a new float32 array; zeros
    when nothing was added yet.
    """
    data = np.asarray(partial, dtype=np.float32)
    if n_projections < 0:
        raise ValueError(f"n_projections must be >= 0, got {n_projections}")
    if n_projections == 0:
        return np.zeros_like(data)
    return data * np.float32(math.pi / (2.0 * n_projections))


def angular_weights(
    angles_deg: npt.ArrayLike,
    *,
    max_gap_factor: float = MAX_GAP_FACTOR,
    duplicate_tol_deg: float = DUPLICATE_TOL_DEG,
) -> npt.NDArray[np.float64]:
    """Per-projection FBP weights (radians/2) from the angular interval each covers.

    Angles are folded onto [0, 180): the projection at theta + 180 is the
    mirror image of the one at theta, so 180 and 360-degree scans are handled
    alike. Each distinct folded angle (a *slot*) owns half the gap to each
    neighbour on the circle; projections in one slot (within
    ``duplicate_tol_deg``, e.g. 0 and 180 in a 0..180 inclusive scan, or
    repeated frames) share its weight equally. A gap wider than
    ``max_gap_factor`` x the median gap is taken as a missing wedge: its
    neighbours claim only half a median gap from it instead of streaking it.
    Equally spaced angles get pi/(2n) each, like ``iradon``.
    """
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    if angles.size == 0:
        return np.zeros(0)
    if not np.all(np.isfinite(angles)):
        raise ValueError("angles must be finite")
    folded = np.mod(angles, 180.0)
    order = np.argsort(folded, kind="stable")
    ordered = folded[order]
    starts = np.concatenate(([True], np.diff(ordered) > duplicate_tol_deg))
    slot_of = np.cumsum(starts) - 1  # slot index of each sorted angle
    n_slots = int(slot_of[-1]) + 1
    if n_slots > 1 and ordered[0] + 180.0 - ordered[-1] <= duplicate_tol_deg:
        slot_of[slot_of == n_slots - 1] = 0  # the last slot wraps onto the first
        n_slots -= 1
    if n_slots == 1:
        slot_width = np.array([180.0])
    else:
        position = ordered[starts][:n_slots]
        gaps = np.diff(np.append(position, position[0] + 180.0))  # gap after each slot
        typical = float(np.median(gaps))
        gaps = np.where(gaps > max_gap_factor * typical, typical, gaps)
        slot_width = 0.5 * (gaps + np.roll(gaps, 1))
    members = np.bincount(slot_of, minlength=n_slots)
    sorted_weights: npt.NDArray[np.float64] = np.radians(slot_width)[slot_of] / (2.0 * members[slot_of])
    weights = np.empty_like(sorted_weights)
    weights[order] = sorted_weights
    return weights


def _as_stack(rows: npt.ArrayLike, n_slices: int, n_cols: int) -> FloatArray:
    data = np.asarray(rows, dtype=np.float32)
    if data.ndim == 1 and n_slices == 1:
        data = data[None, :]
    if data.shape != (n_slices, n_cols):
        raise ValueError(f"rows must have shape ({n_slices}, {n_cols}), got {data.shape}")
    return data


class StreamingFBP:
    """Accumulate filtered backprojections of K detector rows, one projection at a time.

    ``add`` may be called in any angular order, and several instances (one per
    worker) combine with ``merge`` or by summing ``partial`` arrays and
    ``n_projections`` and calling :func:`weight_partial_sum`.

    With ``expected_angles_deg`` (the scan's planned angles) each projection is
    additionally weighted by its angular interval relative to a uniform scan,
    :func:`angular_weights` x 2n/pi, taken from the nearest planned angle; a
    complete scan then equals :func:`fbp` of it even for non-uniform or
    duplicate angles. Without it every projection counts the same (iradon).
    """

    def __init__(
        self,
        n_cols: int,
        center: float,
        slice_size: int | None = None,
        filter_name: str = "ramp",
        n_slices: int = 1,
        *,
        expected_angles_deg: Sequence[float] | npt.ArrayLike | None = None,
        backend: Backend = "auto",
    ) -> None:
        if n_slices < 1:
            raise ValueError(f"n_slices must be >= 1, got {n_slices}")
        self.filter = ProjectionFilter(n_cols, filter_name)
        self.n_cols = int(n_cols)
        self.center = float(center)
        self.slice_size = int(slice_size) if slice_size is not None else self.n_cols
        self.n_slices = int(n_slices)
        self.backend: Backend = backend
        self._partial = np.zeros((self.n_slices, self.slice_size, self.slice_size), np.float32)
        self._count = 0
        self._expected: npt.NDArray[np.float64] | None = None
        self._relative: npt.NDArray[np.float64] | None = None
        if expected_angles_deg is not None:
            expected = np.asarray(expected_angles_deg, dtype=np.float64).ravel()
            if expected.size == 0:
                raise ValueError("expected_angles_deg must not be empty")
            self._expected = expected
            self._relative = angular_weights(expected) * (2.0 * expected.size / math.pi)

    @property
    def partial(self) -> FloatArray:
        """The unweighted (K, N, N) sum so far; the live array, not a copy."""
        return self._partial

    @property
    def n_projections(self) -> int:
        return self._count

    def _weight_for(self, angle_deg: float) -> float:
        if self._expected is None or self._relative is None:
            return 1.0
        distance = np.abs(np.mod(self._expected - angle_deg + 180.0, 360.0) - 180.0)
        return float(self._relative[int(np.argmin(distance))])

    def add(self, rows: npt.ArrayLike, angle_deg: float) -> None:
        """Filter and backproject one projection's K rows (already -log corrected)."""
        data = _as_stack(rows, self.n_slices, self.n_cols)
        filtered = self.filter.apply(data)
        weight = self._weight_for(angle_deg)
        backproject_into(self._partial, filtered, angle_deg, self.center, weight, backend=self.backend)
        self._count += 1

    def merge(self, other: StreamingFBP) -> StreamingFBP:
        """Add another instance's partial sum and count into this one; returns self."""
        if other._partial.shape != self._partial.shape or other.center != self.center:
            raise ValueError("can only merge StreamingFBP with the same geometry")
        if other.filter.name != self.filter.name:
            raise ValueError("can only merge StreamingFBP with the same filter")
        if (self._expected is None) != (other._expected is None) or (
            self._expected is not None
            and other._expected is not None
            and not np.array_equal(self._expected, other._expected)
        ):
            raise ValueError("can only merge StreamingFBP with the same expected angles")
        self._partial += other._partial
        self._count += other._count
        return self

    def result(self) -> FloatArray:
        """The weighted (K, N, N) float32 slices (a new array)."""
        return weight_partial_sum(self._partial, self._count)

    def reset(self) -> None:
        self._partial.fill(0.0)
        self._count = 0


def fbp(
    sinogram: npt.ArrayLike,
    angles_deg: npt.ArrayLike,
    center: float,
    filter_name: str = "ramp",
    slice_size: int | None = None,
    *,
    backend: Backend = "auto",
) -> FloatArray:
    """Offline FBP of a (A, C) or (K, A, C) sinogram -> (N, N) or (K, N, N) float32.

    Each projection is weighted by :func:`angular_weights`, so irregular,
    missing or duplicate angles are handled; ``center`` is the rotation axis
    column (0-based), ``slice_size`` N defaults to C.
    """
    data = np.asarray(sinogram, dtype=np.float32)
    single = data.ndim == 2
    if single:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"sinogram must be (A, C) or (K, A, C), got shape {data.shape}")
    n_slices, n_angles, n_cols = data.shape
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    if angles.size != n_angles:
        raise ValueError(f"{angles.size} angles for {n_angles} projections")
    size = int(slice_size) if slice_size is not None else n_cols
    filtered = ProjectionFilter(n_cols, filter_name).apply(data)  # all rows at once
    per_angle = np.ascontiguousarray(filtered.transpose(1, 0, 2))  # (A, K, C)
    weights = angular_weights(angles)
    out = np.zeros((n_slices, size, size), dtype=np.float32)
    for rows, angle, weight in zip(per_angle, angles, weights, strict=True):
        backproject_into(out, rows, float(angle), center, float(weight), backend=backend)
    return out[0] if single else out
