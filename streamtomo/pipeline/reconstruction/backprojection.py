"""Backprojection of one filtered projection into a stack of live slices.

Geometry is scikit-image ``iradon``'s: slice pixel (i, j) of an N x N slice
sits at x = i - N//2 (row), y = j - N//2 (column) and sees detector position
``u = center + y*cos(theta) - x*sin(theta)`` (columns, 0-based), linearly
interpolated; positions outside [0, n_cols - 1] contribute 0. With
``center = n_cols // 2`` this is exactly ``iradon(..., interpolation="linear")``
before its final pi/(2*n_angles) scale.

Two kernels compute the same sum: a parallel numba one (compiled on first use in
each process) and a pure-numpy fallback; a third, :func:`pixel_major_kernel`, adds
it to slices kept pixel-major (:mod:`streamtomo.pipeline.reconstruction.interleaved`).
All evaluate ``u`` in float64 in
the same operation order so they agree on which pixels lie on the detector;
positions within ``EDGE_TOL`` of the detector ends count as on it, so rounding
noise (cos 90 deg is 6e-17, not 0) cannot drop a whole edge row.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.numba_runtime import compile_kernel, numba_available, parallel_pays

Backend = Literal["auto", "numba", "numpy"]
BACKENDS: tuple[str, ...] = ("auto", "numba", "numpy")

FloatArray = npt.NDArray[np.float32]
EDGE_TOL = 1e-6  # detector columns
_Float64s = npt.NDArray[np.float64]
_BatchKernel = Callable[[FloatArray, FloatArray, float, _Float64s, _Float64s, _Float64s], None]
_PixelMajorKernel = Callable[[FloatArray, FloatArray, _Float64s, _Float64s, _Float64s, _Float64s], None]
ROW_CHUNK = 16  # slice rows per parallel task (its scratch is allocated once)


def resolve_backend(backend: str) -> Literal["numba", "numpy"]:
    """Map ``auto`` to numba when importable, else numpy; validate the name."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "numba" if numba_available() else "numpy"
    if backend == "numba" and not numba_available():
        raise ValueError("backend 'numba' requested but numba is not installed")
    return "numba" if backend == "numba" else "numpy"


@functools.cache
def _numba_kernel(parallel: bool = True) -> _BatchKernel:
    """Compile the numba kernel (in each process); numba is imported only here."""
    return compile_kernel(_define_kernel, parallel, disk_cache=False)  # its closure holds detector_run


def _define_detector_run(numba: Any) -> Callable[[float, float, int, int], tuple[int, int]]:
    # u = base + cos_a * (j - n//2) is linear in j, so the pixels j of a slice row that
    # see the detector are one run [lo, hi] (empty: lo > hi): found analytically, then
    # checked with the very expressions the numpy kernel uses, so that the kernels
    # agree on every edge pixel; the kernels' inner loops run branch-free over it.
    # About 2x the speed of testing every pixel, same sums bit for bit.
    def detector_run(base: float, cos_a: float, n: int, n_cols: int) -> tuple[int, int]:
        half = n // 2
        first = -EDGE_TOL
        last = float(n_cols - 1) + EDGE_TOL
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
        return lo, hi

    return numba.njit(nogil=True, inline="always")(detector_run)  # type: ignore[no-any-return]


def _define_kernel(numba: Any) -> _BatchKernel:
    # The position (left column, fraction) of each pixel is computed once for all K
    # slices, and each detector interval's value and slope of all slices sit side by
    # side (one cache line): ~30% less CPU than per slice at 1024^2 (the gathers, not
    # the stack's memory traffic, bound it: batching projections gained nothing). A
    # batch of B projections is added pixel by pixel in turn: w_0 * p_0, then w_1 * p_1,
    # ...: the same float32 sums, bit for bit, as B calls of one projection.
    detector_run = _define_detector_run(numba)

    def backproject_kernel(
        out: FloatArray,
        rows: FloatArray,
        center: float,
        cos_b: npt.NDArray[np.float64],
        sin_b: npt.NDArray[np.float64],
        weight_b: npt.NDArray[np.float64],
    ) -> None:
        n_slices, n, _ = out.shape
        n_batch = rows.shape[0]
        n_cols = rows.shape[2]
        half = n // 2
        # Value and slope of each interval, all slices side by side: one cache line
        # holds what every slice needs at one detector position.
        table = np.zeros((n_batch, n_cols, n_slices, 2), dtype=np.float32)
        for b in range(n_batch):
            for k in range(n_slices):
                for c in range(n_cols):
                    table[b, c, k, 0] = rows[b, k, c]
                for c in range(n_cols - 1):
                    table[b, c, k, 1] = rows[b, k, c + 1] - rows[b, k, c]
        n_chunks = (n + ROW_CHUNK - 1) // ROW_CHUNK
        for chunk in numba.prange(n_chunks):
            # The run [lo, hi] of each projection, and the detector position of each of
            # its pixels, once for all slices (scratch allocated once per chunk of rows).
            runs = np.empty((n_batch, 2), dtype=np.intp)
            left = np.empty((n_batch, n), dtype=np.intp)
            frac = np.empty((n_batch, n), dtype=np.float32)
            for i in range(chunk * ROW_CHUNK, min(n, (chunk + 1) * ROW_CHUNK)):
                for b in range(n_batch):
                    cos_a = cos_b[b]
                    base = center - sin_b[b] * float(i - half)
                    lo, hi = detector_run(base, cos_a, n, n_cols)
                    runs[b, 0] = lo
                    runs[b, 1] = hi
                    for j in range(lo, hi + 1):
                        u = base + cos_a * float(j - half)
                        i0 = min(max(int(u), 0), n_cols - 2)  # int() is floor here: u > -1
                        left[b, j] = i0
                        frac[b, j] = np.float32(u - i0)
                for b in range(n_batch):
                    w = np.float32(weight_b[b])
                    for j in range(runs[b, 0], runs[b, 1] + 1):
                        i0 = left[b, j]
                        f = frac[b, j]
                        for k in range(n_slices):
                            out[k, i, j] += w * (table[b, i0, k, 0] + f * table[b, i0, k, 1])

    return backproject_kernel  # type: ignore[no-any-return,unused-ignore]


@functools.cache
def pixel_major_kernel(parallel: bool, lanes: int) -> _PixelMajorKernel:
    """The kernel of :class:`~streamtomo.pipeline.reconstruction.interleaved.InterleavedSlices`
    for stacks of ``lanes`` floats per pixel (a multiple of 4), compiled for that
    number (kept here, by the planar one: both share :func:`_define_detector_run`)."""
    if lanes < 4 or lanes % 4 != 0:
        raise ValueError(f"lanes must be a positive multiple of 4, got {lanes}")
    # Not cached on disk: its closure holds numba functions (detector_run, add_rows).
    return compile_kernel(
        functools.partial(_define_pixel_major_kernel, lanes=lanes), parallel, slp=True, disk_cache=False
    )


def _define_pixel_major_kernel(numba: Any, lanes: int) -> _PixelMajorKernel:
    # out (N, N, lanes): the K slices of a pixel side by side, padded to lanes of 4;
    # tables (B, n_cols, 2 * lanes): per projection of the batch, each detector
    # interval's K values, then its K slopes.
    #
    # A batch of B projections is added row of pixels by row: the row (N x lanes floats,
    # 48 KiB for 12 slices of 1024^2) stays in the core's cache while every projection of
    # the batch is added to it, instead of the whole stack (48 MiB) going to memory and
    # back once per projection. Each pixel still gets w_0 * p_0, then w_1 * p_1, ...:
    # the sums of B calls of one projection, bit for bit.
    #
    # Per row, each projection's pixels first get their detector interval (the offset of
    # its table entry) and fraction, in a loop of their own that the compiler
    # vectorizes; the lanes are then added in a loop that only loads, adds and stores.
    # The number of lanes is a constant of the compiled kernel: its groups of 8 (one
    # AVX2 register) and last group of 4 then unroll into straight vector code without
    # a loop or spilled registers around them. 12 slices, one core
    # (bench_backprojection.py): 0.43 -> 0.20 ms per projection at 256^2, 6.7-6.9 ->
    # 3.5-3.6 ms at 1024^2, 27.2 -> 14.5 ms at 2048^2, against the same kernel with the
    # lanes read from the array and the interval found inside the lane loop.
    #
    # The groups are written out lane by lane: LLVM's SLP vectorizer turns identical
    # statements on neighbouring floats into vector instructions, which no loop here
    # would become, and every load comes before the stores because numba cannot tell
    # the compiler that `out` and `tables` do not overlap. Indices are unsigned: numba
    # then skips its negative-index fix-up and a slice's bound clamps, which took a
    # tenth of the kernel's time at 1024^2 and a fifth at 256^2 (12 slices, one core,
    # before the interval loop was split off). Per element the planar kernel's
    # operations in its order: the same sums, bit for bit.
    detector_run = _define_detector_run(numba)
    u64 = np.uint64
    eights = lanes // 8 * 8  # lanes in whole groups of 8; a group of 4 may follow
    u_lanes = u64(lanes)

    @numba.njit(nogil=True)  # type: ignore[untyped-decorator]
    def add_rows(
        flat_out: FloatArray,
        flat_tables: FloatArray,
        n: int,
        n_cols: int,
        first_row: int,
        end_row: int,
        centers: _Float64s,
        cos_b: _Float64s,
        sin_b: _Float64s,
        weight_b: _Float64s,
    ) -> None:
        # Rows [first_row, end_row) of the stack. A function of its own rather than the
        # body of the kernel's prange: numba hands a prange body the closure's constants
        # as arguments, so its lanes would not unroll (10x slower on two threads, tried).
        n_batch = centers.size
        half = n // 2
        table_size = n_cols * 2 * lanes
        # Per projection of the batch: its run [lo, hi] on the row, and each pixel's
        # table entry and fraction (scratch allocated once per call).
        runs = np.empty((n_batch, 2), dtype=np.int64)
        entry = np.empty(n_batch * n, dtype=np.uint64)
        frac = np.empty(n_batch * n, dtype=np.float32)
        for i in range(first_row, end_row):
            for b in range(n_batch):
                cos_a = cos_b[b]
                base = centers[b] - sin_b[b] * float(i - half)
                lo, hi = detector_run(base, cos_a, n, n_cols)
                runs[b, 0] = lo
                runs[b, 1] = hi
                at = u64(b * n)
                first = u64(b * table_size)
                for j in range(lo, hi + 1):
                    u = base + cos_a * float(j - half)
                    i0 = min(max(int(u), 0), n_cols - 2)  # int() is floor here: u > -1
                    frac[at + u64(j)] = np.float32(u - i0)
                    entry[at + u64(j)] = first + u64(i0 * 2 * lanes)
            for b in range(n_batch):
                w = np.float32(weight_b[b])
                at = u64(b * n)
                for j in range(runs[b, 0], runs[b, 1] + 1):
                    f = frac[at + u64(j)]
                    row = entry[at + u64(j)]
                    pixel = u64((i * n + j) * lanes)
                    for group in range(0, eights, 8):
                        t = row + u64(group)  # values t .. t+7, slopes s .. s+7
                        s = t + u_lanes
                        o = pixel + u64(group)
                        a0, a1 = flat_tables[t], flat_tables[t + u64(1)]
                        a2, a3 = flat_tables[t + u64(2)], flat_tables[t + u64(3)]
                        a4, a5 = flat_tables[t + u64(4)], flat_tables[t + u64(5)]
                        a6, a7 = flat_tables[t + u64(6)], flat_tables[t + u64(7)]
                        s0, s1 = flat_tables[s], flat_tables[s + u64(1)]
                        s2, s3 = flat_tables[s + u64(2)], flat_tables[s + u64(3)]
                        s4, s5 = flat_tables[s + u64(4)], flat_tables[s + u64(5)]
                        s6, s7 = flat_tables[s + u64(6)], flat_tables[s + u64(7)]
                        flat_out[o] += w * (a0 + f * s0)
                        flat_out[o + u64(1)] += w * (a1 + f * s1)
                        flat_out[o + u64(2)] += w * (a2 + f * s2)
                        flat_out[o + u64(3)] += w * (a3 + f * s3)
                        flat_out[o + u64(4)] += w * (a4 + f * s4)
                        flat_out[o + u64(5)] += w * (a5 + f * s5)
                        flat_out[o + u64(6)] += w * (a6 + f * s6)
                        flat_out[o + u64(7)] += w * (a7 + f * s7)
                    if eights < lanes:
                        t = row + u64(eights)
                        s = t + u_lanes
                        o = pixel + u64(eights)
                        a0, a1 = flat_tables[t], flat_tables[t + u64(1)]
                        a2, a3 = flat_tables[t + u64(2)], flat_tables[t + u64(3)]
                        s0, s1 = flat_tables[s], flat_tables[s + u64(1)]
                        s2, s3 = flat_tables[s + u64(2)], flat_tables[s + u64(3)]
                        flat_out[o] += w * (a0 + f * s0)
                        flat_out[o + u64(1)] += w * (a1 + f * s1)
                        flat_out[o + u64(2)] += w * (a2 + f * s2)
                        flat_out[o + u64(3)] += w * (a3 + f * s3)

    def pixel_major_kernel(
        out: FloatArray,
        tables: FloatArray,
        centers: _Float64s,
        cos_b: _Float64s,
        sin_b: _Float64s,
        weight_b: _Float64s,
    ) -> None:
        n = out.shape[0]
        n_batch = tables.shape[0]
        n_cols = tables.shape[1]
        # Unsigned indices are not checked: shapes that would put one outside the
        # arrays are refused here, once per call.
        if out.shape[2] != lanes or out.shape[1] != n or tables.shape[2] != 2 * lanes:
            raise ValueError("out must be (N, N, lanes) and tables (B, n_cols, 2 * lanes) for this kernel's lanes")
        if n_cols < 2:
            raise ValueError("need at least 2 detector columns to interpolate")
        if centers.size < n_batch or cos_b.size < n_batch or sin_b.size < n_batch or weight_b.size < n_batch:
            raise ValueError("a centre, cos, sin and weight for every projection of the batch")
        flat_out = out.reshape(-1)
        flat_tables = tables.reshape(-1)
        geometry = (centers[:n_batch], cos_b[:n_batch], sin_b[:n_batch], weight_b[:n_batch])
        n_chunks = (n + ROW_CHUNK - 1) // ROW_CHUNK
        for chunk in numba.prange(n_chunks):
            first_row = chunk * ROW_CHUNK
            end_row = min(n, first_row + ROW_CHUNK)
            add_rows(flat_out, flat_tables, n, n_cols, first_row, end_row, *geometry)

    return pixel_major_kernel  # type: ignore[no-any-return,unused-ignore]


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


def _check_stack(out: FloatArray) -> None:
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.ndim != 3:
        raise TypeError("out must be a float32 array of shape (K, N, N)")
    if out.shape[1] != out.shape[2] or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous (K, N, N) stack, got {out.shape}")


def projection_rows(n_slices: int, filtered_rows: npt.ArrayLike) -> FloatArray:
    """``filtered_rows`` as the (K, n_cols) float32 rows of one projection for K slices;
    ``ValueError`` where they cannot be backprojected."""
    rows = np.ascontiguousarray(filtered_rows, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows[None, :]
    if rows.ndim != 2 or rows.shape[0] != n_slices:
        raise ValueError(f"filtered_rows must be ({n_slices}, n_cols), got {rows.shape}")
    if rows.shape[1] < 2:
        raise ValueError("need at least 2 detector columns to interpolate")
    return rows


def check_rows(out: FloatArray, filtered_rows: npt.ArrayLike) -> FloatArray:
    """``filtered_rows`` as the (K, n_cols) float32 rows of one projection for ``out``;
    ``ValueError`` (``TypeError`` for ``out``) where they cannot be backprojected."""
    _check_stack(out)
    return projection_rows(out.shape[0], filtered_rows)


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
    rows = check_rows(out, filtered_rows)
    backproject_batch_into(out, [rows], [angle_deg], center, [weight], backend)


def backproject_batch_into(
    out: FloatArray,
    filtered_rows: Sequence[FloatArray],
    angles_deg: Sequence[float],
    center: float,
    weights: Sequence[float],
    backend: Backend = "auto",
) -> None:
    """:func:`backproject_into` of several projections in turn, in one pass over ``out``.

    ``filtered_rows[b]`` are projection b's (K, n_cols) rows as :func:`check_rows`
    returns them. The sums are those of one call per projection in this order, bit for
    bit; the numba kernel reads and writes ``out`` once instead of once per projection.
    """
    if not len(filtered_rows):
        return
    if not (len(filtered_rows) == len(angles_deg) == len(weights)):
        raise ValueError("one angle and one weight per projection")
    if resolve_backend(backend) == "numpy":
        for rows, angle, weight in zip(filtered_rows, angles_deg, weights, strict=True):
            theta = math.radians(angle)
            _numpy_kernel(out, rows, float(center), math.cos(theta), math.sin(theta), float(weight))
        return
    _check_stack(out)
    batch = np.stack(filtered_rows) if len(filtered_rows) > 1 else filtered_rows[0][None]
    thetas = [math.radians(angle) for angle in angles_deg]
    # math.cos/sin, as one call per projection computes them.
    cos_b = np.array([math.cos(theta) for theta in thetas], dtype=np.float64)
    sin_b = np.array([math.sin(theta) for theta in thetas], dtype=np.float64)
    weight_b = np.array([float(weight) for weight in weights], dtype=np.float64)
    kernel = _numba_kernel(parallel_pays(out.size))
    kernel(out, np.ascontiguousarray(batch, dtype=np.float32), float(center), cos_b, sin_b, weight_b)
