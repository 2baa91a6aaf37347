"""Backprojection of one filtered projection into a stack of live slices.

Geometry is scikit-image ``iradon``'s: slice pixel (i, j) of an N x N slice
sits at x = i - N//2 (row), y = j - N//2 (column) and sees detector position
``u = center + y*cos(theta) - x*sin(theta)`` (columns, 0-based), linearly
interpolated; positions outside [0, n_cols - 1] contribute 0. With
``center = n_cols // 2`` this is exactly ``iradon(..., interpolation="linear")``
before its final pi/(2*n_angles) scale.

Two kernels compute the same sum: a parallel numba one (compiled on first use,
cached on disk) and a pure-numpy fallback. Both evaluate ``u`` in float64 in
the same operation order so they agree on which pixels lie on the detector;
positions within ``EDGE_TOL`` of the detector ends count as on it, so rounding
noise (cos 90 deg is 6e-17, not 0) cannot drop a whole edge row.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.numba_runtime import PARALLEL_MIN_ELEMENTS, compile_kernel, numba_available

Backend = Literal["auto", "numba", "numpy"]
BACKENDS: tuple[str, ...] = ("auto", "numba", "numpy")

FloatArray = npt.NDArray[np.float32]
EDGE_TOL = 1e-6  # detector columns
_Kernel = Callable[[FloatArray, FloatArray, float, float, float, float], None]


def resolve_backend(backend: str) -> Literal["numba", "numpy"]:
    """Map ``auto`` to numba when importable, else numpy; validate the name."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "numba" if numba_available() else "numpy"
    if backend == "numba" and not numba_available():
        raise ValueError("backend 'numba' requested but numba is not installed")
    return "numba" if backend == "numba" else "numpy"


PARALLEL_MIN_UPDATES = PARALLEL_MIN_ELEMENTS


@functools.cache
def _numba_kernel(parallel: bool = True) -> _Kernel:
    """Compile (or load from cache) the numba kernel; numba is imported only here."""
    return compile_kernel(_define_kernel, parallel)


def _define_kernel(numba: Any) -> _Kernel:
    # u is linear in j, so the pixels of row i that see the detector are one run of j:
    # it is found first (analytically, then checked with the very expressions the numpy
    # kernel uses), and the inner loops run branch-free over it, slice by slice, so
    # they vectorise. About 2x the speed of testing every pixel, same sums bit for bit.
    def backproject_kernel(
        out: FloatArray, rows: FloatArray, center: float, cos_a: float, sin_a: float, weight: float
    ) -> None:
        n_slices, n, _ = out.shape
        n_cols = rows.shape[1]
        half = n // 2
        first = -EDGE_TOL
        last = float(n_cols - 1) + EDGE_TOL
        w = np.float32(weight)
        slopes = np.zeros((n_slices, n_cols), dtype=np.float32)
        for k in range(n_slices):
            for c in range(n_cols - 1):
                slopes[k, c] = rows[k, c + 1] - rows[k, c]
        for i in numba.prange(n):
            base = center - sin_a * float(i - half)
            if cos_a > 1e-12:
                lo = math.ceil((first - base) / cos_a) + half
                hi = math.floor((last - base) / cos_a) + half
            elif cos_a < -1e-12:
                lo = math.ceil((last - base) / cos_a) + half
                hi = math.floor((first - base) / cos_a) + half
            else:
                lo, hi = 0, n - 1
            lo = max(lo - 1, 0)
            hi = min(hi + 1, n - 1)
            while lo <= hi:
                u = base + cos_a * float(lo - half)
                if u < first or u > last:
                    lo += 1
                else:
                    break
            while hi >= lo:
                u = base + cos_a * float(hi - half)
                if u < first or u > last:
                    hi -= 1
                else:
                    break
            for k in range(n_slices):
                for j in range(lo, hi + 1):
                    u = base + cos_a * float(j - half)
                    i0 = min(max(int(u), 0), n_cols - 2)  # int() is floor here: u > -1
                    frac = np.float32(u - i0)
                    out[k, i, j] += w * (rows[k, i0] + frac * slopes[k, i0])

    return backproject_kernel


def _numpy_kernel(out: FloatArray, rows: FloatArray, center: float, cos_a: float, sin_a: float, weight: float) -> None:
    n_slices, n, _ = out.shape
    n_cols = rows.shape[1]
    offsets = np.arange(n, dtype=np.float64) - n // 2
    u = (center - sin_a * offsets)[:, None] + (cos_a * offsets)[None, :]
    on_detector = (u >= -EDGE_TOL) & (u <= n_cols - 1 + EDGE_TOL)
    left = np.clip(np.floor(u), 0, n_cols - 2)
    frac = (u - left).astype(np.float32).ravel()
    index = left.astype(np.intp)
    index[~on_detector] = n_cols  # off the detector: a zero value with a zero slope
    index = index.ravel()
    padded = np.zeros((n_slices, n_cols + 2), dtype=np.float32)
    padded[:, :n_cols] = rows
    slope = np.diff(padded, axis=1)  # b - a of each interval, as the numba kernel has it
    w = np.float32(weight)
    for k in range(n_slices):  # one (N*N) gather per slice; take() beats fancy indexing
        value = padded[k].take(index)
        value += frac * slope[k].take(index)
        value *= w
        out[k] += value.reshape(n, n)


def backproject_into(
    out: FloatArray,
    filtered_rows: npt.ArrayLike,
    angle_deg: float,
    center: float,
    weight: float = 1.0,
    backend: Backend = "auto",
) -> None:
    """Add ``weight`` x the backprojection of one projection to ``out`` in place.

    ``out`` is a C-contiguous float32 (K, N, N) slice stack, ``filtered_rows``
    the K filtered detector rows (K, n_cols) of one projection (row k feeds
    slice k); ``center`` is the rotation axis in detector columns (0-based).
    """
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.ndim != 3:
        raise TypeError("out must be a float32 array of shape (K, N, N)")
    if out.shape[1] != out.shape[2] or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous (K, N, N) stack, got {out.shape}")
    rows = np.ascontiguousarray(filtered_rows, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows[None, :]
    if rows.ndim != 2 or rows.shape[0] != out.shape[0]:
        raise ValueError(f"filtered_rows must be ({out.shape[0]}, n_cols), got {rows.shape}")
    if rows.shape[1] < 2:
        raise ValueError("need at least 2 detector columns to interpolate")
    theta = math.radians(angle_deg)
    kernel = _numba_kernel(out.size >= PARALLEL_MIN_UPDATES) if resolve_backend(backend) == "numba" else _numpy_kernel
    kernel(out, rows, float(center), math.cos(theta), math.sin(theta), float(weight))
