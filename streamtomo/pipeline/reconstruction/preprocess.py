"""Optional corrections before reconstruction; each a pure function of arrays.

* :func:`remove_outliers`: zingers (single bright or dark pixels from direct
  hits on the sensor) replaced by the local median, per projection.
* :func:`remove_stripes_sorting`: ring artefacts come from detector columns
  whose response is off by a constant: a full-height stripe in the sinogram.
  Vo et al. (2018), algorithm 3: sort each column along the angles, smooth the
  sorted image across columns with a median, and unsort.
* :func:`remove_all_stripes`: what ``ring_removal`` runs: Vo's combination of
  dead-stripe (algorithm 6), large-stripe (5) and sorting-based (3) removal;
  :func:`ring_strength` measures what is left.
* :func:`paganin`: single-material phase retrieval (Paganin et al. 2002) of a
  propagation-based phase-contrast projection; a 2D filter, so it needs whole
  projections, not single rows.
* :func:`half_acquisition_to_180`: a 360-degree scan with the axis near one
  detector edge (offset axis, extended field of view) stitched to a
  180-degree sinogram of almost twice the width.
* :func:`angle_slots` / :func:`average_repeats`: back-and-forth and repeated
  angles mapped to distinct slots (weights then come from
  :func:`streamtomo.pipeline.reconstruction.fbp.angular_weights`, which already shares a slot's weight
  among its projections and treats 360-degree scans as two half turns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft
import scipy.ndimage

FloatArray = npt.NDArray[np.float32]
MAD_TO_SIGMA = 1.4826  # median absolute deviation of a normal distribution -> sigma
MIN_TRANSMISSION = 1e-6  # as the flat-field correction's floor: -log stays <= 13.8


def _float_images(data: npt.ArrayLike, name: str, min_ndim: int = 1) -> FloatArray:
    array = np.asarray(data, dtype=np.float32)
    if array.ndim < min_ndim or array.size == 0:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {array.shape}")
    return array


# -- zingers ------------------------------------------------------------------------------


def robust_noise(projections: FloatArray) -> npt.NDArray[np.float64]:
    """Per-projection noise sigma from second differences along the rows.

    x - (left + right)/2 is zero on any linear ramp and has variance 1.5 sigma^2
    for white noise; its median absolute value ignores zingers and edges. (The
    deviation from a 3x3 median is not usable: on a steep ramp the median is
    the pixel itself, so the noise would look ten times smaller.)
    """
    second = projections[..., 1:-1] - 0.5 * (projections[..., :-2] + projections[..., 2:])
    axes = tuple(range(max(projections.ndim - 2, 0), projections.ndim))
    noise: npt.NDArray[np.float64] = MAD_TO_SIGMA * np.median(np.abs(second), axis=axes, keepdims=True) / math.sqrt(1.5)
    return noise


def remove_outliers(
    projections: npt.ArrayLike,
    *,
    size: int = 3,
    threshold: float | None = None,
    n_sigma: float = 6.0,
) -> FloatArray:
    """Replace zingers (isolated pixels far above or below their neighbours) by the local median.

    ``projections`` is one projection (rows, C), a stack (..., rows, C) or rows
    (C,); each projection is filtered on its own (a zinger hits one frame). A
    pixel is an outlier when it exceeds the second-highest of its neighbours in
    a ``size`` x ``size`` box by more than ``threshold`` (or lies that far below
    the second-lowest): edges of the sample have neighbours on both sides of
    the step and are left alone, clusters of two pixels are still caught.
    ``threshold`` is in data units; by default ``n_sigma`` x the projection's
    robust noise (:func:`robust_noise`), so it adapts to counts or -log data.
    """
    data = _float_images(projections, "projections")
    if data.shape[-1] < 3:
        raise ValueError(f"projections need at least 3 columns, got shape {data.shape}")
    if size < 2:
        raise ValueError(f"size must be >= 2 pixels, got {size}")
    if threshold is not None and threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    spatial = min(data.ndim, 2)
    lead = [1] * (data.ndim - spatial)
    box = np.ones([size] * spatial, dtype=bool)
    neighbours = box.copy()
    neighbours[(size // 2,) * spatial] = False  # the pixel itself is not its own neighbour
    footprint = neighbours.reshape(lead + list(neighbours.shape))
    n_neighbours = int(neighbours.sum())
    median = scipy.ndimage.median_filter(data, footprint=box.reshape(lead + list(box.shape)), mode="reflect")
    high = scipy.ndimage.rank_filter(data, n_neighbours - 2, footprint=footprint, mode="reflect")
    low = scipy.ndimage.rank_filter(data, 1, footprint=footprint, mode="reflect")
    limit: npt.NDArray[np.float64] | float
    if threshold is None:
        limit = n_sigma * np.maximum(robust_noise(data), np.finfo(np.float32).tiny)
    else:
        limit = float(threshold)
    outliers = (data - high > limit) | (low - data > limit)
    return np.where(outliers, median, data).astype(np.float32)


# -- rings ---------------------------------------------------------------------------------


STRIPE_METHODS: tuple[str, ...] = ("offset", "replace")


def remove_stripes_sorting(sinogram: npt.ArrayLike, *, size: int = 21, method: str = "offset") -> FloatArray:
    """Vo's sorting-based stripe removal on (A, C) or (..., A, C) -log sinograms.

    A miscalibrated column adds a constant to every angle: after sorting each
    column along the angles it is a step across columns in every sorted row,
    which a median across ``size`` columns removes. ``method="replace"`` is
    Vo et al. (2018) algorithm 3 verbatim: the sinogram becomes the smoothed
    sorted one, sorted back. ``"offset"`` (default) subtracts from each column
    only the median over angles of (sorted - smoothed): the artefact's model
    exactly, so a sharp sample (whose sorted rows also change across columns)
    is not smoothed at the scale of ``size``.
    """
    data = _float_images(sinogram, "sinogram", 2)
    if size < 3:
        raise ValueError(f"size must be >= 3 columns, got {size}")
    if method not in STRIPE_METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(STRIPE_METHODS)}")
    order = np.argsort(data, axis=-2, kind="stable")
    ordered = np.take_along_axis(data, order, axis=-2)
    footprint = [1] * (data.ndim - 1) + [size]
    smoothed = scipy.ndimage.median_filter(ordered, size=footprint, mode="reflect")
    if method == "offset":
        offset = np.median(ordered - smoothed, axis=-2, keepdims=True)
        corrected: FloatArray = (data - offset).astype(np.float32)
        return corrected
    out = np.empty_like(data)
    np.put_along_axis(out, order, smoothed, axis=-2)
    return out


def ring_strength(sinogram: npt.ArrayLike, *, size: int = 21) -> float:
    """How strong the stripes of a (A, C) or (..., A, C) sinogram are (rings once reconstructed).

    The std of the high-passed, angle-averaged profile: a stripe is a column offset
    present at every angle, so it survives the mean over angles, while the sample's
    profile is smooth at the scale of ``size`` columns and is taken out by the
    median. Stacks give the mean over their sinograms.
    """
    data = _float_images(sinogram, "sinogram", 2)
    profile = data.mean(axis=-2, dtype=np.float64)
    footprint = [1] * (profile.ndim - 1) + [size]
    high = profile - scipy.ndimage.median_filter(profile, size=footprint, mode="reflect")
    return float(np.mean(np.std(high, axis=-1)))


def detect_stripes(profile: npt.ArrayLike, snr: float = 3.0) -> npt.NDArray[np.bool_]:
    """Vo et al. (2018) algorithm 4: the columns of a normalised profile that are stripes.

    ``profile`` is about 1 where a column is like its neighbours. Sorted, its middle
    half is a straight line whose rise over the whole length is the noise level; a
    column more than ``snr / 2`` noise levels beyond the line's ends is a stripe.
    """
    values = np.asarray(profile, dtype=np.float64).ravel()
    n = values.size
    mask = np.zeros(n, dtype=bool)
    drop = int(0.25 * n)
    if n - 2 * drop - 1 < 2:
        return mask
    ordered = np.sort(values)
    x = np.arange(n, dtype=np.float64)
    slope, intercept = np.polyfit(x[drop : n - drop - 1], ordered[drop : n - drop - 1], 1)
    end = intercept + slope * (n - 1)
    noise = abs(end - intercept)
    if noise < 1e-5:
        return mask  # noise-free data: nothing stands out from a flat line
    if abs(ordered[-1] - end) / noise >= snr:
        mask |= values > end + 0.5 * snr * noise
    if abs(intercept - ordered[0]) / noise >= snr:
        mask |= values <= intercept - 0.5 * snr * noise
    return mask


def _sort_along_angles(data: FloatArray) -> tuple[FloatArray, npt.NDArray[np.intp]]:
    order = np.argsort(data, axis=0, kind="stable")
    return np.take_along_axis(data, order, axis=0), order


def _unsort(values: FloatArray, order: npt.NDArray[np.intp]) -> FloatArray:
    out = np.empty_like(values)
    np.put_along_axis(out, order, values, axis=0)
    return out


def remove_large_stripes(
    sinogram: npt.ArrayLike, *, snr: float = 3.0, size: int = 51, drop_ratio: float = 0.1, norm: bool = True
) -> FloatArray:
    """Vo et al. (2018) algorithm 5 on one (A, C) sinogram: wide stripes.

    In the sinogram sorted along the angles, the ratio of each column's mean (the
    ``drop_ratio`` extremes left out) to that of the column-median-filtered one is
    about 1 except at stripes (:func:`detect_stripes`); ``norm`` divides every column
    by that ratio, and the stripe columns (grown by one) are replaced by the
    filtered sorted image, sorted back.
    """
    data = _float_images(sinogram, "sinogram", 2).copy()
    n_rows = data.shape[0]
    drop = int(0.5 * float(np.clip(drop_ratio, 0.0, 0.8)) * n_rows)
    ordered, order = _sort_along_angles(data)
    smoothed = scipy.ndimage.median_filter(ordered, size=(1, size), mode="reflect")
    mean_sorted = ordered[drop : n_rows - drop].mean(axis=0, dtype=np.float64)
    mean_smoothed = smoothed[drop : n_rows - drop].mean(axis=0, dtype=np.float64)
    factor = np.ones_like(mean_sorted)
    np.divide(mean_sorted, mean_smoothed, out=factor, where=mean_smoothed != 0)
    stripes = scipy.ndimage.binary_dilation(detect_stripes(factor, snr), iterations=1)
    if norm:
        data /= factor[None, :].astype(np.float32)
    columns = np.flatnonzero(stripes)
    if columns.size:
        data[:, columns] = _unsort(smoothed, order)[:, columns]
    return data


def remove_dead_stripes(
    sinogram: npt.ArrayLike, *, snr: float = 3.0, size: int = 51, residual: bool = True, smooth: int = 10
) -> FloatArray:
    """Vo et al. (2018) algorithm 6 on one (A, C) sinogram: unresponsive and fluctuating columns.

    A dead column does not follow the sample as the angle changes: its total
    deviation from its own smoothed version (along the angles) is far below (or, for
    a fluctuating one, above) that of its neighbours. Such columns, grown by one, are
    interpolated linearly from the nearest good columns in each row; ``residual``
    then removes what is left with :func:`remove_large_stripes`.
    """
    data = _float_images(sinogram, "sinogram", 2).copy()
    n_cols = data.shape[1]
    smoothed = scipy.ndimage.uniform_filter1d(data, smooth, axis=0, mode="reflect")
    deviation = np.abs(data - smoothed).sum(axis=0, dtype=np.float64)
    background = scipy.ndimage.median_filter(deviation, size, mode="reflect")
    background[background == 0.0] = np.mean(np.abs(background))
    factor = np.ones_like(deviation)
    np.divide(deviation, background, out=factor, where=background != 0)
    stripes = scipy.ndimage.binary_dilation(detect_stripes(factor, snr), iterations=1)
    stripes[:2] = False  # edges: nothing to interpolate from on one side
    stripes[-2:] = False
    missing = np.flatnonzero(stripes)
    if 0 < missing.size < n_cols // 3:
        good = np.flatnonzero(~stripes)
        right = np.searchsorted(good, missing)
        left_col, right_col = good[right - 1], good[right]
        weight = ((missing - left_col) / (right_col - left_col)).astype(np.float32)
        data[:, missing] = (1.0 - weight) * data[:, left_col] + weight * data[:, right_col]
    if residual:
        data = remove_large_stripes(data, snr=snr, size=size)
    return data


def _odd_window(width: float, smallest: int, largest: int) -> int:
    return int(min(max(2 * round((width - 1) / 2) + 1, smallest), largest))


def remove_all_stripes(
    sinogram: npt.ArrayLike,
    *,
    snr: float = 3.0,
    large_size: int | None = None,
    small_size: int | None = None,
    drop_ratio: float = 0.1,
) -> FloatArray:
    """Vo et al. (2018) combined, as their ``remove_all_stripe``: algorithms 6, 5, then 3.

    Dead and fluctuating columns are interpolated, wide stripes normalised or
    replaced, then small-to-medium stripes removed by sorting with a median across
    ``small_size`` columns (algorithm 3 verbatim, ``method="replace"``). Takes and
    returns -log sinograms (A, C) or (..., A, C), each filtered on its own, but works
    on the transmission ``exp(-x)``, as Vo applies it to flat-corrected data: the
    stripe detection divides column means by their smoothed values, which in -log
    data are near 0 in air and would flag every air column.

    Window sizes default to Vo's 51 and 21 columns from 640 columns up and shrink in
    proportion on narrower detectors (at least 5 and 3): a window that spans much of
    the sample smooths the sample itself (on 64 columns, 51 and 21 multiply the
    volume's error by 40).
    """
    data = _float_images(sinogram, "sinogram", 2)
    cols = data.shape[-1]
    if large_size is None:
        large_size = _odd_window(cols / 12.5, 5, 51)
    if small_size is None:
        small_size = _odd_window(cols / 30.5, 3, 21)
    if min(large_size, small_size) < 3:
        raise ValueError(f"window sizes must be >= 3 columns, got {large_size} and {small_size}")
    if snr <= 1.0:
        raise ValueError(f"snr must be > 1, got {snr}")
    stack = data.reshape(-1, *data.shape[-2:])
    out = np.empty_like(stack)
    for k, sino in enumerate(stack):
        fixed = np.exp(-sino)
        fixed = remove_dead_stripes(fixed, snr=snr, size=large_size, residual=False)
        fixed = remove_large_stripes(fixed, snr=snr, size=large_size, drop_ratio=drop_ratio)
        fixed = remove_stripes_sorting(fixed, size=small_size, method="replace")
        out[k] = -np.log(np.maximum(fixed, MIN_TRANSMISSION))
    return out.reshape(data.shape)


# -- Paganin -------------------------------------------------------------------------------


def wavelength_m(energy_kev: float) -> float:
    """X-ray wavelength in metres (h c = 1.23984198e-9 keV m)."""
    if energy_kev <= 0:
        raise ValueError(f"energy_kev must be > 0, got {energy_kev}")
    return 1.23984198e-9 / float(energy_kev)


def paganin(
    transmission: npt.ArrayLike,
    *,
    energy_kev: float,
    distance_m: float,
    pixel_size_m: float,
    delta_beta: float,
    pad: bool = True,
) -> FloatArray:
    """Phase retrieval of flat-field corrected projections -> -log, like the pipeline's rows.

    ``transmission`` is I/I0 of one projection (rows, C) or a stack
    (..., rows, C). Returns mu * thickness (the line integral the pipeline
    backprojects) from Paganin's formula
    -ln F^-1[ F[I/I0] / (1 + pi lambda z (delta/beta) |f|^2) ], f in cycles/m.
    ``pad`` mirrors each projection to twice its size first, so the filter
    does not wrap one edge onto the other.
    """
    data = _float_images(transmission, "transmission", 2).astype(np.float64)
    for name, value in (("distance_m", distance_m), ("pixel_size_m", pixel_size_m), ("delta_beta", delta_beta)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    rows, cols = data.shape[-2:]
    if pad:
        widths = [(0, 0)] * (data.ndim - 2) + [(rows // 2, rows - rows // 2), (cols // 2, cols - cols // 2)]
        data = np.pad(data, widths, mode="reflect" if min(rows, cols) > 1 else "edge")
    n_rows, n_cols = data.shape[-2:]
    fy = scipy.fft.fftfreq(n_rows, d=pixel_size_m)[:, None]
    fx = scipy.fft.rfftfreq(n_cols, d=pixel_size_m)[None, :]
    factor = math.pi * wavelength_m(energy_kev) * distance_m * delta_beta
    response = 1.0 / (1.0 + factor * (fx**2 + fy**2))
    filtered = scipy.fft.irfft2(scipy.fft.rfft2(data) * response, s=(n_rows, n_cols))
    if pad:
        filtered = filtered[..., rows // 2 : rows // 2 + rows, cols // 2 : cols // 2 + cols]
    out: FloatArray = (-np.log(np.maximum(filtered, 1e-6))).astype(np.float32)
    return out


# -- 360-degree half acquisition ---------------------------------------------------------


def half_acquisition_to_180(
    sinogram: npt.ArrayLike,
    angles_deg: npt.ArrayLike,
    center: float,
    *,
    tolerance_deg: float | None = None,
) -> tuple[FloatArray, npt.NDArray[np.float64], float]:
    """Stitch an offset-axis 360-degree scan into a 180-degree one.

    ``sinogram`` (A, C) or (K, A, C) covers 360 degrees with the axis at
    ``center`` off the detector middle. The projection at theta + 180, mirrored
    about the axis, continues the one at theta beyond the detector edge; where
    both see the same columns they are blended with a linear ramp. Returns the
    (K, A180, W) (or (A180, W)) sinogram for the angles in [first, first + 180),
    those angles and the axis column in it.
    """
    data = _float_images(sinogram, "sinogram", 2)
    single = data.ndim == 2
    stack = data[None] if single else data
    if stack.ndim != 3:
        raise ValueError(f"sinogram must be (A, C) or (K, A, C), got shape {data.shape}")
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    n_cols = stack.shape[2]
    if angles.size != stack.shape[1]:
        raise ValueError(f"{angles.size} angles for {stack.shape[1]} projections")
    if not 0.0 <= center <= n_cols - 1:
        raise ValueError(f"center {center!r} is outside the detector; allowed: 0 .. {n_cols - 1}")
    span = float(angles.max() - angles.min())
    step = float(np.median(np.diff(np.sort(angles))))
    if span < 360.0 - 1.5 * step:
        raise ValueError(f"half acquisition needs 360 degrees of angles; these span {span:.1f}")
    axis_right = center >= (n_cols - 1) / 2.0
    if not axis_right:  # mirror the detector so that the axis is on the right, undo at the end
        stack = stack[..., ::-1]
        center = n_cols - 1 - center
    tol = 0.51 * step if tolerance_deg is None else float(tolerance_deg)
    first = float(angles.min())
    keep = np.flatnonzero(angles < first + 180.0 - tol)
    keep = keep[np.argsort(angles[keep], kind="stable")]
    partners = []
    for index in keep:
        distance = np.abs(np.mod(angles - angles[index] - 180.0 + 180.0, 360.0) - 180.0)
        best = int(np.argmin(distance))
        if distance[best] > tol:
            raise ValueError(f"no projection 180 degrees after {angles[index]:.3f} (within {tol:.3f} deg)")
        partners.append(best)
    width = math.floor(2.0 * center) + 1
    x = np.arange(width, dtype=np.float64)
    out = np.zeros((stack.shape[0], keep.size, width), dtype=np.float32)
    direct = stack[:, keep, :]
    mirrored_pos = 2.0 * center - x  # column of the opposite projection seen at x
    # Blend over the overlap [2c - (C-1), C-1]: weight of the direct view falls 1 -> 0.
    lo, hi = 2.0 * center - (n_cols - 1), float(n_cols - 1)
    ramp = np.clip((hi - x) / max(hi - lo, 1e-9), 0.0, 1.0) if hi > lo else (x <= hi).astype(np.float64)
    for k in range(stack.shape[0]):
        for a, partner in enumerate(partners):
            own = np.interp(x, np.arange(n_cols), direct[k, a], left=0.0, right=0.0)
            other = np.interp(mirrored_pos, np.arange(n_cols), stack[k, partner], left=0.0, right=0.0)
            out[k, a] = ramp * own + (1.0 - ramp) * other
    new_center = float(center)
    if not axis_right:
        out = np.ascontiguousarray(out[..., ::-1])
        new_center = width - 1 - new_center
    return (out[0] if single else out), angles[keep], new_center


# -- back-and-forth and repeated angles ---------------------------------------------------


def angle_slots(
    angles_deg: npt.ArrayLike, *, tolerance_deg: float = 1e-3, period_deg: float = 360.0
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Slot of each projection and the slots' angles (sorted), angles folded mod ``period``.

    A back-and-forth scan (0 -> 180 -> 0) visits each slot twice; a
    360-degree scan with ``period_deg=360`` keeps theta and theta + 180 apart
    (they are mirror images, not repeats).
    """
    angles = np.mod(np.asarray(angles_deg, dtype=np.float64).ravel(), period_deg)
    if angles.size == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0)
    order = np.argsort(angles, kind="stable")
    ordered = angles[order]
    starts = np.concatenate(([True], np.diff(ordered) > tolerance_deg))
    slot_sorted = np.cumsum(starts) - 1
    if slot_sorted[-1] > 0 and ordered[0] + period_deg - ordered[-1] <= tolerance_deg:
        slot_sorted[slot_sorted == slot_sorted[-1]] = 0  # wraps onto the first slot
    slots = np.empty(angles.size, dtype=np.intp)
    slots[order] = slot_sorted
    n_slots = int(slots.max()) + 1
    slot_angles = np.array([float(np.mean(angles[slots == s])) for s in range(n_slots)])
    return slots, slot_angles


def average_repeats(
    sinogram: npt.ArrayLike, angles_deg: npt.ArrayLike, *, tolerance_deg: float = 1e-3
) -> tuple[FloatArray, npt.NDArray[np.float64], npt.NDArray[np.intp]]:
    """Mean of the projections in each slot: (K, S, C) sinogram, slot angles, counts.

    Halves the backprojection work of a back-and-forth scan with repeated angles
    and gives the same slices as weighting every repeat (noise-free data).
    """
    data = _float_images(sinogram, "sinogram", 2)
    single = data.ndim == 2
    stack = data[None] if single else data
    slots, slot_angles = angle_slots(angles_deg, tolerance_deg=tolerance_deg)
    if slots.size != stack.shape[1]:
        raise ValueError(f"{slots.size} angles for {stack.shape[1]} projections")
    counts = np.bincount(slots, minlength=slot_angles.size)
    sums = np.zeros((slot_angles.size, stack.shape[0], stack.shape[2]), dtype=np.float64)
    np.add.at(sums, slots, stack.transpose(1, 0, 2).astype(np.float64))
    mean = np.ascontiguousarray((sums / counts[:, None, None]).transpose(1, 0, 2), dtype=np.float32)
    return (mean[0] if single else mean), slot_angles, counts


def prepare_volume_sinograms(
    sinograms: npt.ArrayLike,
    *,
    zingers: bool = False,
    rings: bool = False,
    paganin_delta_beta: float = 0.0,
    energy_kev: float = 20.0,
    distance_m: float = 0.1,
    pixel_size_m: float = 1e-6,
    contiguous_rows: bool = True,
) -> FloatArray:
    """The end-of-scan preprocessing, in the usual order, on a (rows, A, C) -log stack.

    Zingers are removed per projection, Paganin works on each projection's
    transmission (it needs neighbouring detector rows: skipped, with a ValueError,
    when the sinogram rows are not contiguous), rings per sinogram.
    """
    data = _float_images(sinograms, "sinograms", 3)
    if zingers or paganin_delta_beta > 0:
        retrieval = PaganinRetrieval(paganin_delta_beta, energy_kev, distance_m, pixel_size_m)
        projections = prepare_projections(
            data.transpose(1, 0, 2),
            zingers=zingers,
            retrieval=retrieval if paganin_delta_beta > 0 else None,
            contiguous_rows=contiguous_rows,
        )
        data = np.ascontiguousarray(projections.transpose(1, 0, 2))
    if rings:
        data = remove_all_stripes(data)
    return data.astype(np.float32, copy=False)


@dataclass(frozen=True)
class PaganinRetrieval:
    """Paganin's phase retrieval with these settings (:func:`paganin`)."""

    delta_beta: float
    energy_kev: float
    distance_m: float
    pixel_size_m: float


def prepare_projections(
    projections: npt.ArrayLike,
    *,
    zingers: bool = False,
    retrieval: PaganinRetrieval | None = None,
    contiguous_rows: bool = True,
) -> FloatArray:
    """The steps of :func:`prepare_volume_sinograms` that work on each projection
    (zingers, then Paganin) on an (A, rows, C) -log stack: any subset of the
    projections gives the same values for them as the whole stack does."""
    data = _float_images(projections, "projections", 3)
    if zingers:
        data = remove_outliers(data)
    if retrieval is not None:
        if not contiguous_rows or data.shape[1] < 2:
            raise ValueError("Paganin phase retrieval needs contiguous detector rows (rows='all' or 'a:b')")
        data = paganin(
            np.exp(-data),
            energy_kev=retrieval.energy_kev,
            distance_m=retrieval.distance_m,
            pixel_size_m=retrieval.pixel_size_m,
            delta_beta=retrieval.delta_beta,
        )
    return data.astype(np.float32, copy=False)
