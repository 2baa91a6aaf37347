"""Input checks shared by every reconstruction backend, so all reject bad input alike.

Geometry and scale are those of :func:`streamtomo.pipeline.reconstruction.fbp.fbp` (scikit-image ``iradon``):
slice pixel (i, j) of an N x N slice sees detector column
``center + (j - N//2) cos(theta) - (i - N//2) sin(theta)``; rows are line integrals
in pixel units, slices are attenuation per pixel.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.reconstruction.filters import check_filter_name

FloatArray = npt.NDArray[np.float32]

# A gap in the folded angles wider than this many median gaps is a missing wedge
# (the same rule as streamtomo.pipeline.reconstruction.fbp.angular_weights uses to stop weighting it).
COVERAGE_GAP_FACTOR = 5.0


class AngularCoverageWarning(UserWarning):
    """The angles leave part of the half turn unmeasured: expect limited-angle streaks."""


@contextmanager
def coverage_warnings_logged(log: logging.Logger, seen: set[str]) -> Iterator[None]:
    """Log this block's angular-coverage warnings as plain lines, each text once per ``seen``.

    A scan reconstructs many times (the centre estimate, every volume batch); as Python
    warnings the same text came out once per call site, with the source line. Other
    warnings pass through unchanged.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AngularCoverageWarning)
        yield
    for item in caught:
        if not issubclass(item.category, AngularCoverageWarning):
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
            continue
        text = str(item.message)
        if text not in seen:
            seen.add(text)
            log.warning("%s", text)


@dataclass(frozen=True)
class ReconInput:
    """Validated inputs: a C-contiguous float32 (K, A, C) stack and float64 angles."""

    sinograms: FloatArray
    angles_deg: npt.NDArray[np.float64]
    center: float
    filter_name: str
    slice_size: int
    single: bool  # the caller passed one (A, C) sinogram: return one (N, N) slice

    @property
    def shape(self) -> tuple[int, int, int]:
        k, a, c = self.sinograms.shape
        return int(k), int(a), int(c)


def check_center(center: float, n_cols: int) -> float:
    """The rotation axis must lie on the detector: ``ValueError`` naming the range."""
    value = float(center)
    if not np.isfinite(value) or not 0.0 <= value <= n_cols - 1:
        raise ValueError(f"center {center!r} is outside the detector; allowed: 0 .. {n_cols - 1} (columns, 0-based)")
    return value


def _slot_gaps(angles_deg: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Distinct folded angles (duplicates within 1e-3 deg merged) and the gap after each."""
    folded = np.sort(np.mod(np.asarray(angles_deg, dtype=np.float64).ravel(), 180.0))
    if folded.size == 0:
        return folded, folded
    keep = np.concatenate(([True], np.diff(folded) > 1e-3))
    slots = folded[keep]
    if slots.size > 1 and slots[0] + 180.0 - slots[-1] <= 1e-3:
        slots = slots[:-1]  # 180 folds onto 0
    return slots, np.diff(np.append(slots, slots[0] + 180.0))


def angular_coverage(angles_deg: npt.ArrayLike) -> tuple[float, float, float]:
    """(covered degrees of the half turn, largest gap, angle where that gap starts).

    Angles fold onto [0, 180) (theta + 180 sees the mirror image of theta);
    repeated angles count once. The covered range is 180 minus the part of the
    largest circular gap beyond a typical step.
    """
    slots, gaps = _slot_gaps(angles_deg)
    if slots.size < 2:
        return 0.0, 180.0, float(slots[0]) if slots.size else 0.0
    widest = int(np.argmax(gaps))
    step = float(np.median(gaps))
    covered = 180.0 - max(float(gaps[widest]) - step, 0.0)
    return covered, float(gaps[widest]), float(slots[widest])


def warn_if_incomplete(angles_deg: npt.ArrayLike, *, stacklevel: int = 3) -> None:
    """Warn (AngularCoverageWarning) when the angles leave a wedge of the half turn out."""
    slots, gaps = _slot_gaps(angles_deg)
    if slots.size < 2:
        warnings.warn(
            f"{slots.size} distinct angle(s) cannot cover 180 degrees; a reconstruction needs angles over 180 (or 360)",
            AngularCoverageWarning,
            stacklevel=stacklevel,
        )
        return
    covered, gap, start = angular_coverage(angles_deg)
    step = float(np.median(gaps))
    if gap > COVERAGE_GAP_FACTOR * step and gap > 1.0:
        warnings.warn(
            f"angles cover only {covered:.1f} of 180 degrees (no projection between {start:.2f} and "
            f"{(start + gap) % 180.0:.2f} deg, folded onto 0..180); expect limited-angle artefacts. "
            "Allowed: angles covering 180 degrees (or 360) with no gap wider than "
            f"{COVERAGE_GAP_FACTOR:g} x the typical step",
            AngularCoverageWarning,
            stacklevel=stacklevel,
        )


def prepare(
    sinograms: npt.ArrayLike,
    angles_deg: npt.ArrayLike,
    center: float,
    filter_name: str = "ramp",
    slice_size: int | None = None,
) -> ReconInput:
    """Validate and normalise what every backend's ``reconstruct`` receives."""
    data = np.asarray(sinograms, dtype=np.float32)
    single = data.ndim == 2
    if single:
        data = data[None]
    if data.ndim != 3 or min(data.shape) < 1:
        raise ValueError(f"sinograms must be (A, C) or (K, A, C), got shape {np.shape(sinograms)}")
    _, n_angles, n_cols = data.shape
    if n_cols < 2:
        raise ValueError(f"need at least 2 detector columns, got {n_cols}")
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    if angles.size != n_angles:
        raise ValueError(f"{angles.size} angles for {n_angles} projections")
    angles, axis, name, size = check_geometry(angles, n_cols, center, filter_name, slice_size, stacklevel=5)
    return ReconInput(np.ascontiguousarray(data), angles, axis, name, size, single)


def check_geometry(
    angles_deg: npt.ArrayLike,
    n_cols: int,
    center: float,
    filter_name: str,
    slice_size: int | None,
    *,
    stacklevel: int = 4,
) -> tuple[npt.NDArray[np.float64], float, str, int]:
    """(angles, centre, filter, slice size) checked as every backend checks them, without
    the sinograms (the volume job plans before it reads any); warns on a missing wedge."""
    if n_cols < 2:
        raise ValueError(f"need at least 2 detector columns, got {n_cols}")
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    if not np.all(np.isfinite(angles)):
        raise ValueError("angles must be finite (degrees)")
    size = n_cols if slice_size is None else int(slice_size)
    if size < 1:
        raise ValueError(f"slice_size must be >= 1, got {slice_size}")
    name = check_filter_name(filter_name)
    axis = check_center(center, n_cols)
    warn_if_incomplete(angles, stacklevel=stacklevel)
    return angles, axis, name, size


def finish(result: FloatArray, spec: ReconInput) -> FloatArray:
    """Return (N, N) for a single sinogram, else (K, N, N); always float32."""
    out = np.asarray(result, dtype=np.float32)
    return out[0] if spec.single else out


def crop_or_pad(slices: npt.NDArray[np.floating], size: int) -> FloatArray:
    """Centre (K, M, M) slices on a (K, size, size) grid keeping pixel M//2 at size//2.

    For engines that always reconstruct on the detector width (tomopy).
    """
    k, m, _ = slices.shape
    out = np.zeros((k, size, size), dtype=np.float32)
    shift = size // 2 - m // 2  # index in out = index in slices + shift
    lo_in, lo_out = max(0, -shift), max(0, shift)
    n = min(m - lo_in, size - lo_out)
    out[:, lo_out : lo_out + n, lo_out : lo_out + n] = slices[:, lo_in : lo_in + n, lo_in : lo_in + n]
    return out


class PreparedBackend:
    """Template for backends: inputs checked and normalised once (:func:`prepare`),
    the engine run on them (:meth:`_run`), the result cropped and typed (:func:`finish`)."""

    name: str
    requires: str

    def reconstruct(
        self,
        sinograms: npt.ArrayLike,
        angles_deg: npt.ArrayLike,
        center: float,
        filter_name: str = "ramp",
        slice_size: int | None = None,
    ) -> FloatArray:
        spec = prepare(sinograms, angles_deg, center, filter_name, slice_size)
        return finish(self._run(spec), spec)

    def _run(self, spec: ReconInput) -> FloatArray:
        raise NotImplementedError
