"""Fused table-lookup correction for integer frames (numba; numpy fallback).

One pass per pixel: ``out = log_denominator - table[p - dark_int + offset]``, clipped.
The numpy path needs five passes over the frame and an int32 temporary; fusing
them is what brings the worker's per-frame cost near a plain memory copy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.numba_runtime import PARALLEL_MIN_ELEMENTS, compile_kernel, numba_available

FloatArray = npt.NDArray[np.float32]
_Kernel = Callable[
    [npt.NDArray[np.integer], npt.NDArray[np.int32], FloatArray, FloatArray, int, float, float, FloatArray], None
]


PARALLEL_MIN_PIXELS = PARALLEL_MIN_ELEMENTS


@functools.cache
def _numba_kernel(parallel: bool = True) -> _Kernel:
    return compile_kernel(_define_kernel, parallel)


def _define_kernel(numba: Any) -> _Kernel:
    def lut_kernel(frame, dark_int, log_denominator, table, offset, low, high, out):  # type: ignore[no-untyped-def]
        rows, cols = frame.shape
        for r in numba.prange(rows):
            for c in range(cols):
                v = log_denominator[r, c] - table[np.int64(frame[r, c]) - dark_int[r, c] + offset]
                if v < low:
                    v = low
                elif v > high:
                    v = high
                out[r, c] = v

    return lut_kernel  # type: ignore[no-any-return,unused-ignore]


def _numpy_kernel(
    frame: npt.NDArray[np.integer],
    dark_int: npt.NDArray[np.int32],
    log_denominator: FloatArray,
    table: FloatArray,
    offset: int,
    low: float,
    high: float,
    out: FloatArray,
) -> None:
    index = np.subtract(frame, dark_int, dtype=np.int32)
    index += offset
    np.take(table, index, out=out)
    np.subtract(log_denominator, out, out=out)
    np.clip(out, low, high, out=out)


def lut_correct(
    frame: npt.NDArray[np.integer],
    dark_int: npt.NDArray[np.int32],
    log_denominator: FloatArray,
    table: FloatArray,
    offset: int,
    low: float,
    high: float,
) -> FloatArray:
    out = np.empty(frame.shape, dtype=np.float32)
    kernel = _numba_kernel(frame.size >= PARALLEL_MIN_PIXELS) if numba_available() else _numpy_kernel
    kernel(np.ascontiguousarray(frame), dark_int, log_denominator, table, offset, low, high, out)
    return out
