"""tomopy gridrec and FBP (conda-forge only: used when ``import tomopy`` works).

Both return slices in the geometry and grey scale of
:mod:`streamtomo.pipeline.reconstruction.backends.common` (slice pixel (i, j) sees column
``center + (j - N//2) cos - (i - N//2) sin``; the scale of ``fbp.fbp``). Where tomopy
puts the axis and what scale it returns were read from its C sources (tomopy 1.15,
``source/libtomo``) and are applied here as derived; the backend contract tests check
the result against :func:`streamtomo.pipeline.reconstruction.fbp.fbp`. Nothing is fitted.

gridrec (``gridrec/gridrec.c``)
    Each row is zero-filled to P = the next power of two >= its length (at least 16)
    and Fourier transformed; a phase factor exp(-2 pi i f center) puts the axis at
    column ``center`` (0-based, as ours). On the P x P frequency grid, image coordinates
    are a = u - off (along cos) and b = k - off (along sin), off = P/2 - (P - ng)//2 for
    an ng x ng output, and value (k, u) is written to ``recon[ng - 1 - k][u]``: the rows
    are flipped about the grid's middle (ng - 1)/2, not about the axis. Output pixel
    (r, c) therefore sees ``center + (c - off) cos - (ng - 1 - off - r) sin``: the axis
    is at row ng - 1 - off, column off (row ng/2 - 1, column ng/2 for even ng), one row
    above the middle, so a crop around the middle comes out one row off. We crop around
    that pixel instead (:func:`gridrec_axis_pixel`). Columns go with cos and rows with
    -sin, as ours: no transpose or flip.

    Filter: tomopy's own (``filters.h``) are |2f| x window with nothing at f = 0, a
    plain ramp without the band-limited kernel's low-frequency terms; with them the
    mean of the Shepp-Logan rows came out 19 % low. So gridrec gets our filter's
    response as its ``custom`` filter (filter_par[j] = response at j/P; P equals our
    filter's FFT length), and the f = 0 term, which its loop skips (j starts at 1), is
    added here: each row's sum x response[0] / P, a constant over the slice. (The mean
    then comes out 6 % low and the lowest ring 8-11 % high: gridding near f = 0.)

    Grey scale (:func:`gridrec_gain`): every angle weighs pi/A (``set_filter_tables``:
    norm = pi / P / A), ours pi/(2A), with the same filter: gridrec's sum is twice
    ours. Gridding then multiplies the image by the Fourier transform of its
    interpolation kernel, K^(a) K^(b), and divides by a table meant to undo it, times
    norm^2, norm = sqrt(pi / 2 / C / lambda) / 1.2 (``set_pswf_tables``). The kernel is
    the tabulated prolate spheroidal function over |u| <= 2 grid cells, but the table
    assumes the width C/pi = 2.23 cells (L = (int)(2C/pi) truncates it), so the division
    undoes K^ only near the axis: gridrec's grey scale is 2 K^(0)^2 norm^2 = 1.119 times
    ours there and grows away from it (by 12 and 7 % at 47 px either side of the axis
    with 128-column rows, P = 256: the table is centred one pixel off the axis). Both
    factors are separable; we divide by them exactly.

fbp (``recon/fbp.c``, ``recon/utils.c``)
    Not a filtered backprojection: ``fbp()`` ignores ``filter_name`` (tomopy's docs:
    "Filtering is not implemented for fbp"). It is a ray-driven backprojection: column
    d is the line -x sin + y cos = d - center + 0.5 (``preprocessing()``: mov =
    (dx - 1)/2 - center + 0.5; tomopy nudges mov by 0.01 px when its fractional part is
    below 0.01, to keep rays off pixel edges) through an ng x ng grid of unit pixels
    around the axis, pixel (r, c) centred at x = r - (ng - 1)/2, y = c - (ng - 1)/2.
    So tomopy's ``center`` is measured from the detector's edge (column d spans
    [d, d + 1)); ours from column 0's centre. We pass ``center + 0.5`` and an odd grid,
    whose middle pixel sits on the axis. A ray on a pixel edge counts for one side
    only (at 0 and 90 degrees the slice then reads the row half a pixel off), so for a
    centre at a half-integer, where all rays of those angles run along our edges, we
    move them 0.01 px, as tomopy does for its own grid. Rows are filtered here (our
    filters) and weighted by :func:`streamtomo.pipeline.reconstruction.fbp.angular_weights`;
    the ray lengths through a unit pixel add up to one per angle, so the scale is ours.

So both engines filter with our filters; tomopy contributes the backprojection
(gridding and 2D FFT, or ray tracing), which is what the benchmark times.

Padding: gridrec rows are zero-padded on the right to ``padded_size(C)`` columns (a
power of two >= 2C, the FFT length of our own filter), which gridrec then uses as P
unchanged. The transform is circular, so zeros on the right equal zeros on both sides
with the centre moved; only their number matters, to keep the ramp's tails from
wrapping round. fbp rows need none here: our filter pads them itself. For gridrec,
rows are also multiplied by our angular weights over its uniform pi/A, so missing or
repeated angles count as in ``fbp``.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.polynomial import legendre

from streamtomo.pipeline.reconstruction.backends.common import FloatArray, PreparedBackend, ReconInput
from streamtomo.pipeline.reconstruction.fbp import angular_weights
from streamtomo.pipeline.reconstruction.filters import ProjectionFilter, frequency_response, padded_size

# gridrec.c's gridding kernel: a prolate spheroidal function as a Legendre series in
# P_0, P_2, ..., P_20 (``coefs``), tabulated at 513 points over [0, 1] (``ltbl`` = 512).
_PSWF_COEFS = (
    0.5767616e02,
    -0.8931343e02,
    0.4167596e02,
    -0.1053599e02,
    0.1662374e01,
    -0.1780527e-00,
    0.1372983e-01,
    -0.7963169e-03,
    0.3593372e-04,
    -0.1295941e-05,
    0.3817796e-07,
)
_PSWF_C, _PSWF_LAMBDA = 7.0, 0.99998546
_TABLE_SIZE = 512  # ltbl
_KERNEL_HALF_WIDTH = int(_PSWF_C / math.pi)  # L2: grid cells either side of a sample
_TABLE_SPACING = 2 * _TABLE_SIZE // int(2 * _PSWF_C / math.pi)  # tblspcg: table steps per cell
RAY_NUDGE = 0.01  # recon/utils.c preprocessing(): px by which fbp keeps rays off pixel edges


def _tomopy() -> Any:  # the tomopy module (untyped)
    """``import tomopy`` (optional: imported only when this backend runs).

    tomopy warns (ImportWarning) at its first import when its optional ``libtomo-accel``
    (the OpenCV/CUDA iterative solvers) was not built; gridrec and fbp do not use it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "TomoPy links to compiled components", ImportWarning)
        import tomopy

    return tomopy


def _check_grid(n_grid: int, fft_size: int) -> None:
    # gridrec reads winv[index + pad] from P - 1 entries: ng may not exceed P - 2.
    if fft_size < 16 or fft_size & (fft_size - 1) or not 0 < n_grid <= fft_size - 2:
        raise ValueError(f"gridrec needs 0 < n_grid <= fft_size - 2, fft_size a power of two; got {n_grid}, {fft_size}")


def gridrec_axis_pixel(n_grid: int, fft_size: int) -> tuple[int, int]:
    """(row, column) of gridrec's ``n_grid`` x ``n_grid`` output that lies on the axis.

    As in ``gridrec.c``: pad = (P - ng) // 2, off = P/2 - pad; frequency-grid index
    off (the origin) goes to column off and to row ng - 1 - off.
    """
    _check_grid(n_grid, fft_size)
    off = fft_size // 2 - (fft_size - n_grid) // 2
    return n_grid - 1 - off, off


@functools.cache
def _pswf_table() -> npt.NDArray[np.float64]:
    """``wtbl``: the kernel at |u| = i / 256 cells, i = 0..512, 1 at 0."""
    series = np.zeros(2 * len(_PSWF_COEFS) - 1)
    series[::2] = _PSWF_COEFS
    values = np.asarray(legendre.legval(np.arange(_TABLE_SIZE + 1) / _TABLE_SIZE, series), dtype=np.float64)
    table: npt.NDArray[np.float64] = values / values[0]
    return table


@functools.cache
def gridrec_gain(n_grid: int, fft_size: int) -> npt.NDArray[np.float64]:
    """Grey scale of gridrec along one axis of its output, relative to ours.

    gridrec's pixel (r, c) is ``2 * gain[c] * gain[n_grid - 1 - r]`` times our value
    (the 2: its filter |2f| with weight pi/A against our 2|f| with pi/(2A)). ``gain[m]``
    is the kernel's Fourier transform at a = m - off pixels from the axis, times the
    ``winv`` entry gridrec divides by (``set_pswf_tables``, read at ``m + pad``).
    """
    _check_grid(n_grid, fft_size)
    table = _pswf_table()
    pad = (fft_size - n_grid) // 2
    offset = np.arange(n_grid) - (fft_size // 2 - pad)  # a: pixels from the axis
    # The kernel is table[round(|u| * 256)] for |u| <= 2 cells: steps [lo_i, hi_i).
    bounds = np.minimum((np.arange(_TABLE_SIZE + 2) - 0.5).clip(0.0) / _TABLE_SPACING, _KERNEL_HALF_WIDTH)
    lo, hi = bounds[:-1], bounds[1:]
    omega = 2.0 * np.pi * offset[:, None] / fft_size
    # integral of K(u) cos(omega u) over -2..2 = 2 sum_i table_i (hi sinc - lo sinc) (np.sinc(x) = sin(pi x)/(pi x))
    steps = hi * np.sinc(omega * hi / np.pi) - lo * np.sinc(omega * lo / np.pi)
    kernel_ft = 2.0 * (steps * table).sum(axis=1)
    norm = math.sqrt(math.pi / 2.0 / _PSWF_C / _PSWF_LAMBDA) / 1.2
    centre = fft_size // 2 - 1  # winv[centre] = norm / wtbl[0]
    fac = _TABLE_SIZE / (centre + 0.5)
    index = np.floor(np.abs(np.arange(n_grid) + pad - centre) * fac + 0.5).astype(np.intp)  # C roundf
    gain: npt.NDArray[np.float64] = kernel_ft * norm / table[index]
    return gain


def _relative_weights(angles_deg: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """Our angular weights over tomopy's uniform pi/(2A): 1 for equally spaced angles."""
    return (angular_weights(angles_deg) * (2.0 * angles_deg.size / math.pi)).astype(np.float32)


def gridrec_engine(
    sinograms: FloatArray, angles_deg: npt.NDArray[np.float64], center: float, size: int, filter_name: str
) -> FloatArray:
    """tomopy gridrec with our filter, cropped around its axis pixel, divided by its gain: ours."""
    tomopy = _tomopy()
    n_slices, n_angles, n_cols = sinograms.shape
    n_grid = 2 * (size // 2) + 2  # even, and holds size x size around the axis pixel
    fft_size = max(padded_size(n_cols), 1 << math.ceil(math.log2(n_grid + 2)))  # >= 64
    response = frequency_response(fft_size // 2, filter_name)  # ours on fft_size bins
    rows = np.zeros((n_slices, n_angles, fft_size), dtype=np.float32)
    rows[:, :, :n_cols] = sinograms * _relative_weights(angles_deg)[None, :, None]
    recon = tomopy.recon(
        rows,
        np.radians(angles_deg),
        center=center,
        algorithm="gridrec",
        sinogram_order=True,
        num_gridx=n_grid,
        num_gridy=n_grid,
        filter_name="custom",  # filter_par[j]: the response at frequency j / fft_size
        filter_par=np.ascontiguousarray(response[: fft_size // 2], dtype=np.float32),
        ncore=os.cpu_count(),
    )
    row, col = gridrec_axis_pixel(n_grid, fft_size)
    top, left = row - size // 2, col - size // 2  # our pixel (size//2, size//2) is on the axis
    gain = gridrec_gain(n_grid, fft_size)
    scale = 2.0 * np.outer(gain[n_grid - 1 - np.arange(top, top + size)], gain[left : left + size])
    out = recon[:, top : top + size, left : left + size] / scale.astype(np.float32)
    # The frequency-0 term gridrec skips: each row's sum times response[0] / fft_size, at
    # weight pi/(2A), spread evenly (what our filter adds to every column of the row).
    dc = rows.sum(axis=(1, 2), dtype=np.float64) * (math.pi / (2.0 * n_angles) * float(response[0]) / fft_size)
    out += dc.astype(np.float32)[:, None, None]
    return np.ascontiguousarray(out, dtype=np.float32)


def fbp_engine(
    sinograms: FloatArray, angles_deg: npt.NDArray[np.float64], center: float, size: int, filter_name: str
) -> FloatArray:
    """Our filter and angular weights, tomopy's ray-driven backprojection: our scale."""
    tomopy = _tomopy()
    rows = ProjectionFilter(sinograms.shape[2], filter_name).apply(sinograms)
    rows *= angular_weights(angles_deg).astype(np.float32)[None, :, None]
    n_grid = 2 * (size // 2) + 1  # odd: pixel (n_grid - 1)/2 = size//2 is centred on the axis
    axis = center + 0.5  # tomopy's fbp measures the axis from the detector's edge
    edge = center % 1.0 - 0.5  # how far the rays d - center run from our pixel edges
    if abs(edge) < RAY_NUDGE:
        # Rays along a pixel edge land on one side only; tomopy moves its rays RAY_NUDGE px
        # off its own grid's edges (at integers) but not off ours (at half-integers), so we
        # do it here, away from the edge. Its own test (fractional part of mov below 0.01)
        # then does not fire, or moves them further off.
        axis += math.copysign(RAY_NUDGE, edge)
    recon = tomopy.recon(
        rows,
        np.radians(angles_deg),
        center=axis,
        algorithm="fbp",
        sinogram_order=True,
        num_gridx=n_grid,
        num_gridy=n_grid,
        ncore=os.cpu_count(),
    )
    return np.ascontiguousarray(recon[:, :size, :size], dtype=np.float32)


class TomopyBackend(PreparedBackend):
    """``tomopy.recon`` with ``algorithm`` 'gridrec' or 'fbp' (see the module notes)."""

    requires = "tomopy (conda install -c conda-forge tomopy; not on PyPI)"

    def __init__(self, algorithm: str) -> None:
        if algorithm not in ("gridrec", "fbp"):
            raise ValueError(f"unknown tomopy algorithm {algorithm!r}; allowed: gridrec, fbp")
        self.algorithm = algorithm
        self.name = f"tomopy-{algorithm}"

    def _run(self, spec: ReconInput) -> FloatArray:
        engine = fbp_engine if self.algorithm == "fbp" else gridrec_engine
        return engine(spec.sinograms, spec.angles_deg, spec.center, spec.slice_size, spec.filter_name)
