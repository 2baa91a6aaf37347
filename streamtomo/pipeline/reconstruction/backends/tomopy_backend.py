"""tomopy gridrec and FBP (conda-forge only: used when ``import tomopy`` works).

tomopy reconstructs on a grid of the (padded) detector width in its own image
orientation. We pad each row with zeros to twice its width (as tomopy users do
against the ramp's wrap-round), then crop to our slice size. Orientation and
grey scale are not documented against scikit-image's convention, so they are
measured once per algorithm on a small asymmetric test object against our
direct FBP (:func:`calibrate`) and applied to every result.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.reconstruction.backends.common import FloatArray, PreparedBackend, ReconInput, crop_or_pad

TOMOPY_FILTERS = {"ramp": "ramlak", "shepp-logan": "shepp", "hann": "hann"}
Orientation = tuple[int, bool, bool]  # (transpose?, flip rows?, flip columns?) as ints/bools


def orient(slices: npt.NDArray[np.float32], orientation: Orientation) -> npt.NDArray[np.float32]:
    """Apply one of the 8 symmetries of the square to (K, N, N) slices."""
    transpose, flip_rows, flip_cols = orientation
    out = slices.transpose(0, 2, 1) if transpose else slices
    if flip_rows:
        out = out[:, ::-1, :]
    if flip_cols:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


ORIENTATIONS: tuple[Orientation, ...] = tuple((t, r, c) for t in (0, 1) for r in (False, True) for c in (False, True))


def calibrate(
    engine: Callable[[FloatArray, npt.NDArray[np.float64], float, int], npt.NDArray[np.float32]],
) -> tuple[Orientation, float]:
    """Which symmetry and scale map ``engine``'s slices onto :func:`streamtomo.pipeline.reconstruction.fbp.fbp`'s.

    ``engine(sinograms (1, A, C), angles_deg, center, slice_size)`` returns
    (1, N, N). The test object is two ellipses off the axes (no symmetry).
    """
    from streamtomo.pipeline.reconstruction.fbp import fbp
    from streamtomo.pipeline.simulation.phantom import Ellipsoid
    from streamtomo.pipeline.simulation.projector import project_ellipsoids

    blobs = (
        Ellipsoid(0.35, 0.15, 1.0, 0.30, 0.25, 0.0, 30.0, 1.0),
        Ellipsoid(0.10, 0.20, 1.0, -0.35, -0.10, 0.0, 0.0, 0.5),
    )
    n, center = 64, 30.5
    angles = np.linspace(0.0, 180.0, 120, endpoint=False)
    sino = project_ellipsoids(blobs, 1, n, angles, center, phantom_size=n, oversample=2).transpose(1, 0, 2)
    reference = fbp(sino, angles, center)[0]
    result = engine(np.ascontiguousarray(sino), angles, center, n)
    scores = [float(np.corrcoef(orient(result, o)[0].ravel(), reference.ravel())[0, 1]) for o in ORIENTATIONS]
    best = ORIENTATIONS[int(np.argmax(scores))]
    mapped = orient(result, best)[0]
    scale = float((reference * mapped).sum() / max(float((mapped * mapped).sum()), 1e-30))
    return best, scale


def _tomopy_engine(algorithm: str, filter_name: str = "ramp") -> Callable[..., npt.NDArray[np.float32]]:
    def engine(
        sinograms: FloatArray, angles_deg: npt.NDArray[np.float64], center: float, size: int
    ) -> npt.NDArray[np.float32]:
        import tomopy  # optional: imported only when this backend runs

        n_cols = sinograms.shape[2]
        pad = n_cols // 2
        padded = np.pad(sinograms, ((0, 0), (0, 0), (pad, pad)))
        kwargs: dict[str, Any] = {"algorithm": algorithm, "filter_name": TOMOPY_FILTERS[filter_name]}
        recon = tomopy.recon(
            padded,
            np.radians(angles_deg),
            center=center + pad,
            sinogram_order=True,
            ncore=os.cpu_count(),
            **kwargs,
        )
        return crop_or_pad(np.asarray(recon, dtype=np.float32), size)

    return engine


@functools.cache
def _calibration(algorithm: str) -> tuple[Orientation, float]:
    return calibrate(_tomopy_engine(algorithm))


class TomopyBackend(PreparedBackend):
    """``tomopy.recon`` with ``algorithm`` 'gridrec' or 'fbp'."""

    requires = "tomopy (conda install -c conda-forge tomopy; not on PyPI)"

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.name = f"tomopy-{algorithm}"

    def _run(self, spec: ReconInput) -> FloatArray:
        orientation, scale = _calibration(self.algorithm)
        engine = _tomopy_engine(self.algorithm, spec.filter_name)
        out = orient(engine(spec.sinograms, spec.angles_deg, spec.center, spec.slice_size), orientation)
        out *= np.float32(scale)
        return out
