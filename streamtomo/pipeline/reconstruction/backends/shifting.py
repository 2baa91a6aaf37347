"""Sub-pixel shifts of detector rows, for engines that want the axis at a fixed column."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import scipy.fft

from streamtomo.pipeline.reconstruction.backends.common import FloatArray


def recentre(sinograms: FloatArray, shifts: npt.NDArray[np.float64], width: int) -> FloatArray:
    """Rows g(m) = p(m + shift_a), m = 0..width-1, zero off the detector: (K, A, width).

    The shift is exact for band-limited rows (a linear phase); the row is
    zero-padded on both sides first so nothing wraps round.
    """
    n_slices, n_angles, n_cols = sinograms.shape
    lead = math.ceil(float(np.max(np.abs(shifts)))) + 2
    size = int(scipy.fft.next_fast_len(2 * (n_cols + width + 2 * lead), real=True))
    buffer = np.zeros((n_slices, n_angles, size), dtype=np.float32)
    buffer[:, :, lead : lead + n_cols] = sinograms  # buffer(m) = p(m - lead)
    k = scipy.fft.rfftfreq(size)
    phase = np.exp(2j * np.pi * k[None, :] * (shifts[:, None] + lead)).astype(np.complex64)
    spectrum = scipy.fft.rfft(buffer, axis=-1)
    spectrum *= phase
    out = scipy.fft.irfft(spectrum, n=size, axis=-1)[..., :width]
    return np.ascontiguousarray(out, dtype=np.float32)


def centred_width(center: float, n_cols: int) -> int:
    """Odd width W whose middle column (W-1)/2 can hold the axis with the whole detector."""
    half = math.ceil(max(center, n_cols - 1 - center)) + 2
    return 2 * half + 1
