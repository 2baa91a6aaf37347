"""Centre of rotation: automatic estimates and a (live) sweep over candidate centres.

* :func:`estimate_center`: the 180-degree projection is the 0-degree one
  mirrored about the axis, so the 0-degree projection and the flipped 180-degree
  one differ by a shift s = 2 c - (C - 1); phase correlation finds s in
  milliseconds, refined to 1/100 px on the correlation's Fourier series.
* :func:`estimate_center_sinogram`: the same over every pair of projections
  180 degrees apart in a sinogram (all of them in a 360-degree scan; in a
  180-degree scan the first and last, up to one step short of 180).
* :func:`estimate_center_vo`: Vo et al. (2014): the 180-degree sinogram joined
  to its mirror is a consistent 360-degree sinogram only for the right centre;
  a wrong one puts energy outside the double wedge of its 2D spectrum. Robust
  for objects that do not fit a pure shift; no 180-degree pair needed.
* :func:`auto_center`: what the parameter value ``center=auto`` runs.
* :func:`cor_sweep` / :class:`StreamingCorSweep`: one row reconstructed for many
  centres. Moving the axis by d is the same as shifting the filtered row by d,
  so every candidate is one filtered row (shifted exactly, by a phase ramp,
  :class:`SweepRows`) and one backprojection call updates all candidates for a
  projection (the live workers add them to the live slices' stack).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import scipy.fft

from streamtomo.pipeline.reconstruction.backends.common import check_center
from streamtomo.pipeline.reconstruction.backprojection import Backend
from streamtomo.pipeline.reconstruction.fbp import angular_weights, weight_partial_sum
from streamtomo.pipeline.reconstruction.filters import check_filter_name, frequency_response, padded_size
from streamtomo.pipeline.reconstruction.interleaved import InterleavedSlices

FloatArray = npt.NDArray[np.float32]
SUBPIXEL_STEP = 0.01  # px: the refinement grid of the correlation peak


def _as_rows(projection: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    data = np.asarray(projection, dtype=np.float64)
    if data.ndim == 1:
        data = data[None, :]
    if data.ndim != 2 or data.shape[1] < 4:
        raise ValueError(f"{name} must be (C,) or (rows, C) with C >= 4, got shape {np.shape(projection)}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return data


def _tukey(n: int, fraction: float = 0.2) -> npt.NDArray[np.float64]:
    """1 in the middle, cosine ramps over ``fraction``/2 of the row at each end."""
    ramp = max(1, int(fraction * n / 2))
    window = np.ones(n)
    edge = 0.5 * (1.0 - np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp))
    window[:ramp] = edge
    window[n - ramp :] = edge[::-1]
    return window


def _cross_spectrum(
    first: npt.NDArray[np.float64], second: npt.NDArray[np.float64], size: int
) -> npt.NDArray[np.complex128]:
    """Sum over rows of the whitened cross spectrum of ``second`` against ``first``."""
    # Taper the detector ends: otherwise the two rows' edges (where data meets the
    # zero padding) correlate best at lag 0, whatever the axis.
    taper = _tukey(first.shape[-1])
    a = scipy.fft.rfft((first - first.mean(axis=-1, keepdims=True)) * taper, n=size, axis=-1)
    b = scipy.fft.rfft((second - second.mean(axis=-1, keepdims=True)) * taper, n=size, axis=-1)
    cross = b * np.conj(a)
    magnitude = np.abs(cross)
    floor = 1e-12 * float(magnitude.max(initial=0.0)) + 1e-300
    summed: npt.NDArray[np.complex128] = (cross / np.maximum(magnitude, floor)).sum(axis=0)
    summed[0] = 0.0  # the mean carries no position
    return summed


def _peak_shift(cross: npt.NDArray[np.complex128], size: int, max_shift: float) -> float:
    """Shift s (px) maximising the correlation whose rfft half-spectrum is ``cross``.

    The integer peak of the inverse FFT, then the Fourier series evaluated on a
    1/100 px grid around it (an upsampled DFT, as Guizar-Sicairos et al.).
    """
    corr = scipy.fft.irfft(cross, n=size)
    lags = np.arange(size)
    lags = np.where(lags > size // 2, lags - size, lags)
    allowed = np.abs(lags) <= max_shift
    if not allowed.any():
        raise ValueError("no shift within the allowed range")
    coarse = float(lags[allowed][int(np.argmax(corr[allowed]))])
    fine = coarse + np.arange(-1.0, 1.0 + SUBPIXEL_STEP / 2, SUBPIXEL_STEP)
    k = np.arange(cross.size)
    scale = np.where((k == 0) | ((size % 2 == 0) & (k == cross.size - 1)), 1.0, 2.0)  # rfft half: count +-k
    series = (scale * cross)[None, :] * np.exp(2j * np.pi * np.outer(fine, k) / size)
    return float(fine[int(np.argmax(series.real.sum(axis=1)))])


def estimate_center(proj_0deg: npt.ArrayLike, proj_180deg: npt.ArrayLike, *, max_offset: float | None = None) -> float:
    """Rotation axis column (0-based, sub-pixel) from projections 180 degrees apart.

    Projections are (C,) or (rows, C) -log (or transmission) images. The
    flipped 180-degree projection f(u) = p0(u - s) with s = 2c - (C - 1).
    ``max_offset`` bounds |c - (C-1)/2| (default: the whole detector).
    """
    first = _as_rows(proj_0deg, "proj_0deg")
    second = _as_rows(proj_180deg, "proj_180deg")
    if first.shape != second.shape:
        raise ValueError(f"projections differ in shape: {first.shape} and {second.shape}")
    n_cols = first.shape[1]
    size = int(scipy.fft.next_fast_len(2 * n_cols, real=True))  # no wrap-round of the shift
    limit = (n_cols - 1) if max_offset is None else 2.0 * float(max_offset)
    shift = _peak_shift(_cross_spectrum(first, second[:, ::-1], size), size, limit)
    return float(np.clip((n_cols - 1 - shift) / 2.0, 0.0, n_cols - 1))


def _sinogram_stack(sinogram: npt.ArrayLike) -> npt.NDArray[np.float64]:
    data = np.asarray(sinogram, dtype=np.float64)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"sinogram must be (A, C) or (K, A, C), got shape {np.shape(sinogram)}")
    return data


def opposite_pairs(angles_deg: npt.ArrayLike, tolerance_deg: float | None = None) -> list[tuple[int, int]]:
    """Index pairs (i, j) with angle_j - angle_i within ``tolerance`` of +180 degrees.

    The tolerance defaults to 1.01 x the median step, so a 0..180-step scan
    pairs its first and last projection.
    """
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    if angles.size < 2:
        return []
    steps = np.diff(np.unique(np.round(angles, 6)))
    step = float(np.median(steps)) if steps.size else 0.0
    tol = 1.01 * step if tolerance_deg is None else float(tolerance_deg)
    order = np.argsort(angles)
    ordered = angles[order]
    pairs: list[tuple[int, int]] = []
    for i, angle in zip(order, ordered, strict=True):
        j = int(np.searchsorted(ordered, angle + 180.0))
        best = min((c for c in (j - 1, j) if 0 <= c < ordered.size), key=lambda c: abs(ordered[c] - angle - 180.0))
        if abs(ordered[best] - angle - 180.0) <= tol and ordered[best] > angle:
            pairs.append((int(i), int(order[best])))
    return pairs


def estimate_center_sinogram(
    sinogram: npt.ArrayLike, angles_deg: npt.ArrayLike, *, tolerance_deg: float | None = None
) -> float:
    """Axis from every pair of projections about 180 degrees apart, correlated together.

    ``ValueError`` when no pair is within the tolerance (use
    :func:`estimate_center_vo` then).
    """
    data = _sinogram_stack(sinogram)
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    if angles.size != data.shape[1]:
        raise ValueError(f"{angles.size} angles for {data.shape[1]} projections")
    pairs = opposite_pairs(angles, tolerance_deg)
    if not pairs:
        raise ValueError("no two projections are 180 degrees apart (within one angular step); use estimate_center_vo")
    n_cols = data.shape[2]
    size = int(scipy.fft.next_fast_len(2 * n_cols, real=True))
    first = np.concatenate([data[:, i] for i, _ in pairs])
    second = np.concatenate([data[:, j, ::-1] for _, j in pairs])
    shift = _peak_shift(_cross_spectrum(first, second, size), size, n_cols - 1)
    return float(np.clip((n_cols - 1 - shift) / 2.0, 0.0, n_cols - 1))


def _shift_rows(rows: npt.NDArray[np.float64], shift: float) -> npt.NDArray[np.float64]:
    """rows(u - shift), exactly (phase ramp), zero-padded so nothing wraps."""
    n_cols = rows.shape[-1]
    pad = math.ceil(abs(shift)) + 2
    size = int(scipy.fft.next_fast_len(n_cols + 2 * pad, real=True))
    k = scipy.fft.rfftfreq(size)
    spectrum = scipy.fft.rfft(rows, n=size, axis=-1) * np.exp(-2j * np.pi * k * shift)
    out: npt.NDArray[np.float64] = scipy.fft.irfft(spectrum, n=size, axis=-1)[..., :n_cols]
    return out


def _vo_metric(
    sino: npt.NDArray[np.float64], flipped: npt.NDArray[np.float64], shift: float, mask: npt.NDArray[np.bool_]
) -> float:
    """Energy outside the double wedge of [sino; mirrored sino] for a mirror shift."""
    joined = np.concatenate([sino, _shift_rows(flipped, shift)], axis=0)
    spectrum = np.abs(scipy.fft.rfft2(joined - joined.mean()))  # real input: half the bins suffice
    return float(spectrum[mask].mean())


def _double_wedge_outside(n_rows: int, n_cols: int, radius: float) -> npt.NDArray[np.bool_]:
    """Spectrum bins a consistent 360-degree sinogram leaves (nearly) empty.

    An object within ``radius`` px of the axis has angular frequency m (cycles
    per turn) at most 2 pi radius |f| at detector frequency f (cycles/px).
    """
    m = np.abs(scipy.fft.fftfreq(n_rows, 1.0 / n_rows))[:, None]
    f = scipy.fft.rfftfreq(n_cols)[None, :]  # the rfft2 half spectrum
    return np.asarray(m > 2.0 * np.pi * radius * f + 2.0, dtype=bool)


def estimate_center_vo(
    sinogram: npt.ArrayLike,
    angles_deg: npt.ArrayLike | None = None,
    *,
    search_radius: float | None = None,
    max_angles: int = 360,
) -> float:
    """Axis of a 180-degree sinogram (A, C) or stack (K, A, C) by Vo's Fourier metric.

    Coarse search over whole pixels of a binned detector within
    ``search_radius`` px of the detector middle (default a quarter of the
    detector), then 0.25 and 0.05 px steps around the best. Angles are thinned to ``max_angles`` for speed;
    ``angles_deg`` (if given) must span about 180 degrees.
    """
    data = _sinogram_stack(sinogram).mean(axis=0)
    n_angles, n_cols = data.shape
    if angles_deg is not None:
        angles = np.asarray(angles_deg, dtype=np.float64).ravel()
        if angles.size != n_angles:
            raise ValueError(f"{angles.size} angles for {n_angles} projections")
        span = float(angles.max() - angles.min())
        if not 170.0 <= span <= 190.0:
            raise ValueError(f"Vo's method needs a 180-degree sinogram; these angles span {span:.1f} degrees")
        data = data[np.argsort(angles, kind="stable")]
    step = max(1, math.ceil(n_angles / max_angles))
    sino = data[::step]
    middle = (n_cols - 1) / 2.0
    radius = n_cols / 4.0 if search_radius is None else float(search_radius)
    # Coarse: whole pixels of a detector binned by `binning` (cheap FFTs), then finer
    # steps at full resolution around the best. Offsets are c - middle, in full pixels.
    binning = max(1, n_cols // 128)
    usable = (n_cols // binning) * binning
    binned = sino[:, :usable].reshape(sino.shape[0], -1, binning).mean(axis=2)
    binned_middle = (binned.shape[1] - 1) / 2.0
    offset_of_bin = (middle - (binning - 1) / 2.0) / binning - binned_middle  # full-res middle, binned px
    coarse = np.arange(-math.floor(radius / binning), math.floor(radius / binning) + 1, dtype=np.float64)
    best = binning * (_best_offset(binned, coarse + offset_of_bin) - offset_of_bin)
    for half_width, step_px in ((float(binning), 1.0), (1.0, 0.25), (0.25, 0.05)):
        candidates = best + np.arange(-half_width, half_width + 1e-9, step_px)
        best = _best_offset(sino, candidates)
    return float(np.clip(middle + best, 0.0, n_cols - 1))


def _best_offset(sino: npt.NDArray[np.float64], offsets: npt.NDArray[np.float64]) -> float:
    """The axis offset from the row middle (px) whose mirrored sinogram fits best."""
    flipped = sino[:, ::-1]
    mask = _double_wedge_outside(2 * sino.shape[0], sino.shape[1], sino.shape[1] / 2.0)
    # Mirror shift s = 2 (c - middle): flipped(u - s) is the sinogram at the opposite angle.
    scores = [_vo_metric(sino, flipped, 2.0 * offset, mask) for offset in offsets]
    return float(offsets[int(np.argmin(scores))])


def auto_center(sinogram: npt.ArrayLike, angles_deg: npt.ArrayLike) -> float:
    """``center=auto``: phase correlation of opposite projections, else Vo's method."""
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    if opposite_pairs(angles):
        return estimate_center_sinogram(sinogram, angles)
    return estimate_center_vo(sinogram, angles)


# -- centre sweep ----------------------------------------------------------------------------


def _check_centers(centers: npt.ArrayLike, n_cols: int) -> npt.NDArray[np.float64]:
    values = np.asarray(centers, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("centers must not be empty")
    for value in values:
        check_center(float(value), n_cols)
    return values


class SweepRows:
    """One row, filtered, as each candidate centre sees it from one reference axis.

    Backprojecting the filtered row q with centre c equals backprojecting
    q(u + c - reference) with centre ``reference``, so all candidates share one axis
    and one pixel geometry. ``reference`` defaults to the row's middle, (C - 1) / 2;
    live slices use their own centre, so the sweep and the live slices are
    backprojected together.

    What that equality leaves out (a review measured it against a filtered
    backprojection at each candidate's own centre, 16x64 detector):

    * the reference axis's detector window: rays a candidate's own axis puts on the
      detector but the reference's puts within ``|c - reference|`` columns past its
      edge are not summed (and the shift, circular over the padded transform,
      brings the filtered row's tails to the edge columns): candidates differ at the
      rim of the field of view (up to 0.4 of the slice's maximum there), not inside
      (1e-6 for whole-pixel offsets);
    * fractional offsets (an even ``cor_sweep_steps``, a step such as 0.5): the
      phase ramp shifts the row band-limited, where a backprojection interpolates
      linearly: about 4% apart on average, alike for every candidate.

    The sweep is for comparing candidates with each other; the slices at the chosen
    centre are the filtered backprojection (:func:`cor_sweep` is the same
    computation offline).
    """

    def __init__(
        self, n_cols: int, centers: npt.ArrayLike, filter_name: str = "ramp", reference: float | None = None
    ) -> None:
        self.n_cols = int(n_cols)
        self.centers = _check_centers(centers, self.n_cols)
        self.filter_name = check_filter_name(filter_name)
        self.reference = (self.n_cols - 1) / 2.0 if reference is None else check_center(float(reference), self.n_cols)
        self._size = padded_size(self.n_cols)
        k = scipy.fft.rfftfreq(self._size)
        offsets = self.centers - self.reference
        response = frequency_response(self.n_cols, self.filter_name).astype(np.complex128)
        # Per candidate, the filter's response times the phase ramp of its shift (M, F).
        self.spectra = (response[None, :] * np.exp(2j * np.pi * k[None, :] * offsets[:, None])).astype(np.complex64)
        self.spectra.setflags(write=False)

    def filtered_rows(self, row: npt.ArrayLike) -> FloatArray:
        """The (M, C) filtered row as each candidate centre sees it from the reference axis."""
        data = np.asarray(row, dtype=np.float32).ravel()
        if data.size != self.n_cols:
            raise ValueError(f"row must have {self.n_cols} columns, got {data.size}")
        spectrum = scipy.fft.rfft(data, n=self._size)
        shifted = scipy.fft.irfft(self.spectra * spectrum[None, :], n=self._size, axis=-1)[:, : self.n_cols]
        return np.ascontiguousarray(shifted, dtype=np.float32)


class StreamingCorSweep:
    """Live strip of one row reconstructed at every candidate centre (M, N, N).

    ``add(row, angle)`` filters the row once, shifts it once per candidate
    (:class:`SweepRows`) and backprojects all of them in one call: the pixel geometry
    is computed once per projection for the whole strip, into slices kept
    pixel-major (:class:`InterleavedSlices`).
    """

    def __init__(
        self,
        n_cols: int,
        centers: npt.ArrayLike,
        slice_size: int | None = None,
        filter_name: str = "ramp",
        *,
        expected_angles_deg: npt.ArrayLike | None = None,
        backend: Backend = "auto",
        reference: float | None = None,
    ) -> None:
        self.rows = SweepRows(n_cols, centers, filter_name, reference)
        self.slice_size = self.rows.n_cols if slice_size is None else int(slice_size)
        self._partial = InterleavedSlices(self.rows.centers.size, self.slice_size, backend)
        self._count = 0
        self._expected: npt.NDArray[np.float64] | None = None
        self._relative: npt.NDArray[np.float64] | None = None
        if expected_angles_deg is not None:
            expected = np.asarray(expected_angles_deg, dtype=np.float64).ravel()
            self._expected = expected
            self._relative = angular_weights(expected) * (2.0 * expected.size / math.pi)

    @property
    def n_projections(self) -> int:
        return self._count

    def _weight(self, angle_deg: float) -> float:
        if self._expected is None or self._relative is None:
            return 1.0
        distance = np.abs(np.mod(self._expected - angle_deg + 180.0, 360.0) - 180.0)
        return float(self._relative[int(np.argmin(distance))])

    def add(self, row: npt.ArrayLike, angle_deg: float) -> None:
        """Add one projection's row (C,) (-log corrected) to every candidate."""
        self._partial.add(self.rows.filtered_rows(row), angle_deg, self.rows.reference, self._weight(angle_deg))
        self._count += 1

    def result(self) -> FloatArray:
        """(M, N, N) float32 slices, one per centre in ``centers`` order."""
        return weight_partial_sum(self._partial.slices(), self._count)

    def reset(self) -> None:
        self._partial.clear()
        self._count = 0


def cor_sweep(
    sinogram_row: npt.ArrayLike,
    angles_deg: npt.ArrayLike,
    centers: npt.ArrayLike,
    filter_name: str = "ramp",
    slice_size: int | None = None,
    *,
    backend: str = "default",
    reference: float | None = None,
) -> FloatArray:
    """One sinogram row (A, C) reconstructed at each centre -> (len(centers), N, N).

    All candidates go through one batched reconstruction: candidate m is the
    row shifted by centers[m] - reference (a phase ramp) with the axis at
    ``reference`` (default (C-1)/2; the live sweep uses the live slices' centre).
    """
    from streamtomo.pipeline.reconstruction.backends import get_backend

    data = np.asarray(sinogram_row, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"sinogram_row must be (A, C), got shape {data.shape}")
    n_cols = data.shape[1]
    values = _check_centers(centers, n_cols)
    reference = (n_cols - 1) / 2.0 if reference is None else check_center(float(reference), n_cols)
    stack = np.stack([_shift_rows(data, reference - c) for c in values]).astype(np.float32)
    return get_backend(backend).reconstruct(stack, angles_deg, reference, filter_name, slice_size)
