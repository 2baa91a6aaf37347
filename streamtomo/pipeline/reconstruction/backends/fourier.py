"""Our fast default: filtered backprojection evaluated in Fourier space with a NUFFT.

Why: direct backprojection costs N*N*A pixel updates and tops out near 4-5
giga-updates/s on two cores; the Fourier slice theorem turns the same sum into
a type-1 non-uniform FFT (gridding with a compact kernel, one 2D FFT,
deapodisation), O(A*L + N^2 log N), computed by FINUFFT.

The sum is exactly :func:`streamtomo.pipeline.reconstruction.fbp.fbp`'s, only with trigonometric instead
of linear interpolation along the detector, so the scale and geometry agree:

1. filter each detector row as ``fbp`` does (zero-padded to 2C, same response),
   so the ramp's long tails do not wrap;
2. keep the filtered row on the detector, zero outside it (as ``fbp`` reads 0
   off the detector), in a window of L samples starting at the axis; L is just
   long enough that no slice pixel reads a wrapped detector value, i.e. about
   1.2 N instead of the 2C samples of the padded row (1.6x fewer NUFFT points);
3. its L-point DFT B_k gives the row anywhere by trigonometric interpolation,
   q(axis + d) = 1/L sum_k B_k e^(2 pi i k d / L); with d = y cos - x sin the
   whole slice is sum_{a,k} w_a B_ak / L e^(i (x X_ak + y Y_ak)), a type-1 NUFFT
   at the polar points X = -2 pi k sin / L, Y = 2 pi k cos / L;
4. two slices go through one complex transform (slice 2k as the real part,
   2k+1 as the imaginary part): the operator is real, so both come out intact.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft

from streamtomo.pipeline.reconstruction.backends.common import FloatArray, ReconInput, finish, prepare
from streamtomo.pipeline.reconstruction.fbp import angular_weights
from streamtomo.pipeline.reconstruction.filters import frequency_response, padded_size

DEFAULT_EPS = 1e-3  # NUFFT tolerance: far below the interpolation error of fbp itself
DEFAULT_UPSAMPLING = 1.25  # finufft's small fine grid: FFT 1.6x^2 cheaper than 2.0, kernel only 1 wider
MAX_BATCH = 16  # slices per NUFFT execution (8 complex pairs): more gains little
BATCH_MEMORY = 512 << 20  # bytes of temporaries a batch may use (N=2048, 3216 angles: 4 slices)
INTERPOLATIONS: tuple[str, ...] = ("linear", "sinc")
# FFTW_MEASURE makes finufft's fine-grid FFT about 3x faster (a fifth of the time at
# N=1024) but plans for ~2 s the first time a problem is seen in a process (FFTW keeps
# the wisdom after that). Worth it from about a hundred slices: whole volumes.
MEASURE_MIN_SLICES = 128
FFTW_ESTIMATE, FFTW_MEASURE = 64, 0
_measured: set[tuple[int, int, int, float]] = set()


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def window_length(n_cols: int, center: float, slice_size: int) -> int:
    """Samples L of the periodic detector window; no slice pixel may read a wrapped column.

    A pixel at distance r <= R from the slice centre reads d in [-R, R] around
    the axis at ``floor(center)``; the detector occupies d in [-s, C-1-s]. Its
    periodic copies start at C-1-s-L and -s+L, so L > R + max(s, C-s) + 1.
    """
    s = math.floor(center)
    half = slice_size // 2
    radius = math.hypot(half, max(half, slice_size - 1 - half))
    need = math.ceil(radius + max(s, n_cols - s) + 3)
    return int(scipy.fft.next_fast_len(need))


@functools.cache
def finufft_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("finufft") is not None


def _polar_points(
    angles_deg: npt.NDArray[np.float64], length: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """NUFFT points (A*P,) for the DFT bins k of an L window, and k itself (P,).

    An even L has a Nyquist bin whose real interpolant is cos(pi d): it is split
    into halves at k = -L/2 and +L/2, so P = L + 1 points per angle then.
    """
    k = scipy.fft.fftfreq(length, 1.0 / length)  # 0, 1, ..., -1 (integers as floats)
    if length % 2 == 0:
        k = np.append(k, length / 2.0)
    theta = np.radians(angles_deg)
    step = 2.0 * np.pi * k / length
    x = (-np.sin(theta)[:, None] * step[None, :]).astype(np.float32).ravel()
    y = (np.cos(theta)[:, None] * step[None, :]).astype(np.float32).ravel()
    return x, y, k


def _strengths(
    filtered: FloatArray,
    spec: ReconInput,
    length: int,
    factors: npt.NDArray[np.complex64],
    out: npt.NDArray[np.complex64],
) -> None:
    """Pack filtered rows (B, A, C) in pairs into windows, DFT them, scale: out (pairs, A, P)."""
    n_cols = filtered.shape[2]
    s = math.floor(spec.center)
    window = np.zeros((out.shape[0], filtered.shape[1], length), dtype=np.complex64)
    # Column t sits at (t - s) mod L: columns s.. at the start, columns ..s-1 at the end.
    for part, rows in ((window.real, filtered[0::2]), (window.imag, filtered[1::2])):
        part[: rows.shape[0], :, : n_cols - s] = rows[:, :, s:]
        part[: rows.shape[0], :, length - s :] = rows[:, :, :s]
    spectrum = scipy.fft.fft(window, axis=-1, workers=cpu_count(), overwrite_x=True)
    del window
    np.multiply(spectrum, factors[:, :length], out=out[:, :, :length])  # one pass: copy and scale
    if out.shape[2] > length:  # even L: split the Nyquist bin into -L/2 and +L/2 (factors hold 1/2)
        out[:, :, length] = spectrum[:, :, length // 2] * factors[:, length]


def fourier_fbp(
    sinograms: npt.ArrayLike,
    angles_deg: npt.ArrayLike,
    center: float,
    filter_name: str = "ramp",
    slice_size: int | None = None,
    *,
    eps: float = DEFAULT_EPS,
    upsampling: float = DEFAULT_UPSAMPLING,
    batch: int | None = None,
    nthreads: int | None = None,
    interpolation: str = "linear",
) -> FloatArray:
    """FBP of (A, C) or (K, A, C) sinograms -> (N, N) or (K, N, N), as :func:`streamtomo.pipeline.reconstruction.fbp.fbp`.

    Needs ``finufft`` (PyPI). Angles are weighted by :func:`angular_weights`
    (irregular, missing and duplicate angles, 360-degree scans). Give many
    slices per call: the NUFFT points are sorted once per call.

    ``interpolation="linear"`` (default) damps each detector frequency f by
    sinc^2(f), the response of ``fbp``'s linear interpolation, so both agree
    (and flat regions are less noisy); ``"sinc"`` keeps the full band.
    ``batch`` slices go through the NUFFT at once (default: up to 16, fewer
    when their temporaries would exceed 512 MiB).
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; allowed: {', '.join(INTERPOLATIONS)}")
    spec = prepare(sinograms, angles_deg, center, filter_name, slice_size)
    if not finufft_available():
        raise RuntimeError("the 'fourier' backend needs finufft: pip install finufft")
    import finufft  # optional: imported only when this backend runs

    n_slices, n_angles, n_cols = spec.shape
    size = spec.slice_size
    threads = cpu_count() if nthreads is None else max(1, int(nthreads))
    length = window_length(n_cols, spec.center, size)
    x, y, k = _polar_points(spec.angles_deg, length)
    weights = angular_weights(spec.angles_deg)
    frac = spec.center - math.floor(spec.center)
    # w_a / L e^(2 pi i k frac / L): angular weight, DFT normalisation, sub-pixel axis.
    factors = weights[:, None] / length * np.exp(2j * np.pi * k[None, :] * frac / length)
    if interpolation == "linear":
        factors = factors * (np.sinc(k / length) ** 2)[None, :]
    if k.size > length:  # the two halves of the Nyquist bin
        factors[:, length // 2] *= 0.5
        factors[:, length] *= 0.5
    factors = factors.astype(np.complex64)

    if batch is None:
        # Per slice: padded spectrum, filtered row, half a window and its strengths, half an image.
        per_slice = n_angles * (4 * padded_size(n_cols) + 4 * n_cols + 8 * (length + 1)) + 4 * size * size
        batch = min(MAX_BATCH, BATCH_MEMORY // max(per_slice, 1))
    batch = max(2, int(batch) + int(batch) % 2)
    n_pairs = min((n_slices + 1) // 2, batch // 2)
    problem = (size, n_pairs, threads, float(upsampling))
    measure = problem in _measured or n_slices >= MEASURE_MIN_SLICES
    opts: dict[str, Any] = {
        "upsampfac": upsampling,
        "nthreads": threads,
        "fftw": FFTW_MEASURE if measure else FFTW_ESTIMATE,
    }
    if measure:
        _measured.add(problem)
    plan = finufft.Plan(1, (size, size), n_trans=n_pairs, eps=eps, isign=1, dtype="complex64", **opts)
    plan.setpts(x, y)

    response = frequency_response(n_cols, spec.filter_name)
    padded = padded_size(n_cols)
    out = np.empty((n_slices, size, size), dtype=np.float32)
    strengths = np.empty((n_pairs, n_angles, k.size), dtype=np.complex64)
    for first in range(0, n_slices, 2 * n_pairs):
        rows = spec.sinograms[first : first + 2 * n_pairs]
        # Same filtering as ProjectionFilter.apply, threaded: rfft over the padded row.
        spectrum = scipy.fft.rfft(rows, n=padded, axis=-1, workers=threads)
        spectrum *= response
        filtered = scipy.fft.irfft(spectrum, n=padded, axis=-1, workers=threads)[..., :n_cols]
        del spectrum
        _strengths(np.asarray(filtered, dtype=np.float32), spec, length, factors, strengths)
        del filtered
        images = plan.execute(strengths.reshape(n_pairs, -1))
        count = rows.shape[0]
        out[first : first + count : 2] = images.real[: (count + 1) // 2]
        out[first + 1 : first + count : 2] = images.imag[: count // 2]
    return finish(out, spec)


class FourierBackend:
    """Registry adapter for :func:`fourier_fbp`."""

    name = "fourier"
    requires = "finufft"

    def reconstruct(
        self,
        sinograms: npt.ArrayLike,
        angles_deg: npt.ArrayLike,
        center: float,
        filter_name: str = "ramp",
        slice_size: int | None = None,
    ) -> FloatArray:
        return fourier_fbp(sinograms, angles_deg, center, filter_name, slice_size)
