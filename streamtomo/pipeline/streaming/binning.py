"""Detector binning for previews of big detectors (the ``bin`` parameter).

Integer frames are binned as the rounded mean of each b x b block and keep their
dtype, so the worker's table-lookup correction still applies and the message to
the reducer shrinks by b^2 (rounding the mean of 4 or 16 Poisson counts adds an
error far below their noise). Float frames are averaged in float32. Edge rows and
columns that do not fill a block are dropped, as in tomocupy and RECASTX.

Integer frames are binned by a numba kernel, one pass over the frame: numpy's sum
over the axes of a (rows, b, cols, b) view took 45 ms for a 2048^2 uint16 frame,
70% of a worker's CPU per frame at ``bin=2``. Integer sums are exact in any order,
so both give the same frame; numpy remains the fallback (and bins float frames,
whose mean depends on the order of its sum).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.numba_runtime import compile_kernel, numba_available, parallel_pays

_BinKernel = Callable[[npt.NDArray[np.generic], int, npt.NDArray[np.generic]], None]
# Integers a numba int64 sum takes without changing type (uint64 + int64 is float64 there).
_KERNEL_DTYPES = frozenset(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32))


def bin_frame(data: npt.NDArray[np.generic], factor: int) -> npt.NDArray[np.generic]:
    """(R, C) -> (R // factor, C // factor) block means; the frame itself for factor 1."""
    if factor == 1:
        return data
    rows, cols = (data.shape[0] // factor) * factor, (data.shape[1] // factor) * factor
    if rows == 0 or cols == 0:
        return data[:0, :0]
    if data.dtype in _KERNEL_DTYPES and numba_available():
        out = np.empty((rows // factor, cols // factor), dtype=data.dtype)
        _numba_bin(parallel_pays(out.size * factor * factor))(data, factor, out)
        return out
    blocks = data[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor)
    if np.issubdtype(data.dtype, np.integer):
        total = blocks.sum(axis=(1, 3), dtype=np.int64)
        area = factor * factor
        binned: npt.NDArray[np.generic] = ((total + area // 2) // area).astype(data.dtype)
        return binned
    means: npt.NDArray[np.generic] = blocks.mean(axis=(1, 3), dtype=np.float32)
    return means


@functools.cache
def _numba_bin(parallel: bool) -> _BinKernel:
    return compile_kernel(_define_bin, parallel)


def _define_bin(numba: Any) -> _BinKernel:
    # Row by row of the output: its `factor` input rows are read in order. The sum is
    # int64, the rounding numpy's: floor((total + area // 2) / area).
    def bin_kernel(data: npt.NDArray[np.generic], factor: int, out: npt.NDArray[np.generic]) -> None:
        rows_out, cols_out = out.shape
        area = factor * factor
        half = area // 2
        for r in numba.prange(rows_out):
            totals = np.zeros(cols_out, dtype=np.int64)
            for dr in range(factor):
                row = data[r * factor + dr]
                if factor == 2:  # the common case, written out: the compiler vectorizes it
                    for c in range(cols_out):
                        totals[c] += np.int64(row[2 * c]) + np.int64(row[2 * c + 1])
                else:
                    for c in range(cols_out):
                        for dc in range(factor):
                            totals[c] += row[c * factor + dc]
            for c in range(cols_out):
                out[r, c] = (totals[c] + half) // area

    return bin_kernel  # type: ignore[no-any-return,unused-ignore]
