"""Frequency-domain filters applied to each detector row before backprojection.

The ramp is built like scikit-image's ``iradon`` (Kak & Slaney eq. 61: the
Fourier transform of the band-limited spatial ramp kernel, which avoids the DC
bias of a naive ``|f|``), with the same padding and the same factor 2, so our
slices and ``iradon``'s share one scale.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt
import scipy.fft

FILTER_NAMES: tuple[str, ...] = ("ramp", "shepp-logan", "hann")

FloatArray = npt.NDArray[np.float32]


def check_filter_name(name: str) -> str:
    """Return the canonical filter name; ``ValueError`` listing the allowed ones."""
    canonical = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    if canonical not in FILTER_NAMES:
        raise ValueError(f"unknown filter {name!r}; allowed: {', '.join(FILTER_NAMES)}")
    return str(canonical)


def padded_size(n_cols: int) -> int:
    """FFT length: a power of two >= 2*n_cols (and >= 64), as in ``iradon``.

    Twice the row length keeps the circular convolution from wrapping the
    filter's long negative tails back onto the row.
    """
    if n_cols < 1:
        raise ValueError(f"n_cols must be positive, got {n_cols}")
    return max(64, 1 << math.ceil(math.log2(2 * n_cols)))


def ramp_kernel(size: int) -> npt.NDArray[np.float64]:
    """Spatial ramp kernel of length ``size`` in FFT order (Kak & Slaney eq. 61).

    h(0) = 1/4, h(n) = -1/(pi n)^2 for odd n, 0 for even n != 0.
    """
    n = np.arange(size)
    dist = np.minimum(n, size - n)  # circular distance: index size-k means -k
    h = np.zeros(size)
    h[0] = 0.25
    odd = dist % 2 == 1
    h[odd] = -1.0 / (np.pi * dist[odd]) ** 2
    return h


@functools.lru_cache(maxsize=64)
def frequency_response(n_cols: int, name: str) -> FloatArray:
    """Real response on the ``rfft`` bins of the padded row (read-only, cached)."""
    name = check_filter_name(name)
    size = padded_size(n_cols)
    response: npt.NDArray[np.float64] = 2.0 * scipy.fft.rfft(ramp_kernel(size)).real  # even kernel: real
    freq = np.arange(response.size) / size  # cycles per sample, 0 .. 0.5
    if name == "shepp-logan":
        response *= np.sinc(freq)  # sin(pi f)/(pi f)
    elif name == "hann":
        response *= 0.5 * (1.0 + np.cos(2.0 * np.pi * freq))  # 1 at DC, 0 at Nyquist
    out = response.astype(np.float32)
    out.setflags(write=False)
    return out


class ProjectionFilter:
    """Filter detector rows of a fixed length; the response is computed once."""

    def __init__(self, n_cols: int, name: str = "ramp") -> None:
        self.name = check_filter_name(name)
        self.n_cols = int(n_cols)
        self.size = padded_size(self.n_cols)
        self.response = frequency_response(self.n_cols, self.name)

    def apply(self, rows: npt.ArrayLike) -> FloatArray:
        """Filter ``rows`` of shape (..., n_cols); returns float32 of the same shape."""
        data = np.asarray(rows, dtype=np.float32)
        if data.ndim == 0 or data.shape[-1] != self.n_cols:
            raise ValueError(f"rows must end in {self.n_cols} columns, got shape {data.shape}")
        spectrum = scipy.fft.rfft(data, n=self.size, axis=-1)  # zero-pads to self.size
        spectrum *= self.response
        filtered = scipy.fft.irfft(spectrum, n=self.size, axis=-1)[..., : self.n_cols]
        return np.ascontiguousarray(filtered, dtype=np.float32)
