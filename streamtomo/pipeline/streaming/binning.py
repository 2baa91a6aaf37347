"""Detector binning for previews of big detectors (the ``bin`` parameter).

Integer frames are binned as the rounded mean of each b x b block and keep their
dtype, so the worker's table-lookup correction still applies and the message to
the reducer shrinks by b^2 (rounding the mean of 4 or 16 Poisson counts adds an
error far below their noise). Float frames are averaged in float32. Edge rows and
columns that do not fill a block are dropped, as in tomocupy and RECASTX.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def bin_frame(data: npt.NDArray[np.generic], factor: int) -> npt.NDArray[np.generic]:
    """(R, C) -> (R // factor, C // factor) block means; the frame itself for factor 1."""
    if factor == 1:
        return data
    rows, cols = (data.shape[0] // factor) * factor, (data.shape[1] // factor) * factor
    if rows == 0 or cols == 0:
        return data[:0, :0]
    blocks = data[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor)
    if np.issubdtype(data.dtype, np.integer):
        total = blocks.sum(axis=(1, 3), dtype=np.int64)
        area = factor * factor
        binned: npt.NDArray[np.generic] = ((total + area // 2) // area).astype(data.dtype)
        return binned
    means: npt.NDArray[np.generic] = blocks.mean(axis=(1, 3), dtype=np.float32)
    return means
