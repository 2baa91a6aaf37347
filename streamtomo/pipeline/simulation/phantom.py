"""3D Shepp-Logan head phantom: Kak & Slaney ellipsoids, higher-contrast densities.

Geometry is the 3D table of Kak & Slaney, "Principles of Computerized
Tomographic Imaging" (1988), p. 102 (with the published errata); densities are
the Yu-Ye-Wang (2004) contrast-enhanced set, so soft-tissue features stand out
and values stay in [0, 1]. Every ellipsoid is rotated about z only.

Coordinates are normalised to [-1, 1]. A volume of n voxels per side uses the
reconstruction grid of :mod:`streamtomo.pipeline.reconstruction.backprojection`: voxel [k, i, j] is at
x = (j - n//2) / (n/2), y = -(i - n//2) / (n/2) (rows go down, y goes up) and
z = (k - n//2) / (n/2). Most features lie around z = -0.25, i.e. slice
``k = n//2 - n//8``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Ellipsoid:
    """Semi-axes (a along x', b along y', c along z), centre, rotation about z, density."""

    a: float
    b: float
    c: float
    x0: float
    y0: float
    z0: float
    phi_deg: float
    density: float


SHEPP_LOGAN_3D: tuple[Ellipsoid, ...] = (
    Ellipsoid(0.6900, 0.920, 0.900, 0.00, 0.000, 0.000, 0.0, 1.0),  # skull
    Ellipsoid(0.6624, 0.874, 0.880, 0.00, 0.000, 0.000, 0.0, -0.8),  # brain
    Ellipsoid(0.4100, 0.160, 0.210, -0.22, 0.000, -0.250, 108.0, -0.2),  # ventricles
    Ellipsoid(0.3100, 0.110, 0.220, 0.22, 0.000, -0.250, 72.0, -0.2),
    Ellipsoid(0.2100, 0.250, 0.500, 0.00, 0.350, -0.250, 0.0, 0.2),
    Ellipsoid(0.0460, 0.046, 0.046, 0.00, 0.100, -0.250, 0.0, 0.2),
    Ellipsoid(0.0460, 0.023, 0.020, -0.08, -0.650, -0.250, 0.0, 0.1),
    Ellipsoid(0.0460, 0.023, 0.020, 0.06, -0.650, -0.250, 90.0, 0.1),
    Ellipsoid(0.0560, 0.040, 0.100, 0.06, -0.105, 0.625, 90.0, 0.2),
    Ellipsoid(0.0560, 0.056, 0.100, 0.00, 0.100, 0.625, 0.0, -0.2),
)


def grid_coordinates(n: int, scale: float | None = None) -> npt.NDArray[np.float64]:
    """Normalised coordinate of pixel index 0..n-1 (centre n//2, ``scale`` px per unit)."""
    return (np.arange(n) - n // 2) / (n / 2.0 if scale is None else scale)


def sample_offsets(oversample: int) -> npt.NDArray[np.float64]:
    """Sub-pixel sample positions (pixels, centred on 0) for box-averaging a pixel."""
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    return (np.arange(oversample) + 0.5) / oversample - 0.5


def shepp_logan_3d(
    n: int,
    *,
    oversample: int = 1,
    planes: npt.ArrayLike | None = None,
    ellipsoids: tuple[Ellipsoid, ...] = SHEPP_LOGAN_3D,
) -> npt.NDArray[np.float32]:
    """(n, n, n) float32 phantom indexed [z, row, column].

    ``oversample`` > 1 averages oversample^3 point samples per voxel (partial
    volume at edges, as a real voxel would see it). ``planes`` picks z indices
    to compute, giving (len(planes), n, n); cheaper when only a few are needed.
    """
    if n < 2:
        raise ValueError(f"phantom size must be >= 2, got {n}")
    coord = grid_coordinates(n)
    z_index = np.arange(n) if planes is None else np.asarray(planes, dtype=np.intp).ravel()
    z = coord[z_index]
    offsets = sample_offsets(oversample) * (2.0 / n)  # pixels -> normalised units
    share = 1.0 / oversample**3
    volume = np.zeros((z.size, n, n), dtype=np.float32)
    for e in ellipsoids:
        cos_p, sin_p = np.cos(np.radians(e.phi_deg)), np.sin(np.radians(e.phi_deg))
        for ox in offsets:
            for oy in offsets:
                dx = coord[None, :] + ox - e.x0
                dy = -coord[:, None] + oy - e.y0
                xr = dx * cos_p + dy * sin_p  # into the ellipsoid's own axes
                yr = -dx * sin_p + dy * cos_p
                in_plane = (xr / e.a) ** 2 + (yr / e.b) ** 2  # (n, n)
                for oz in offsets:
                    reach = 1.0 - ((z + oz - e.z0) / e.c) ** 2  # > 0 where the plane cuts it
                    cut = np.flatnonzero(reach >= 0.0)  # only those planes: bounded memory
                    inside = in_plane[None, :, :] <= reach[cut, None, None]
                    volume[cut] += np.float32(e.density * share) * inside
    return volume
