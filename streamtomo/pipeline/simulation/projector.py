"""Parallel-beam forward projection, in the geometry of :mod:`streamtomo.pipeline.reconstruction.backprojection`.

Detector column u sees the ray at t = u - center (pixels) with
t = x cos(theta) + y sin(theta), x to the right and y up in the slice (rows go
down); detector row k is volume slice k. Line integrals are in pixel units, so
:func:`streamtomo.pipeline.reconstruction.fbp.fbp` of the result gives back the volume's values.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import scipy.ndimage

from streamtomo.pipeline.simulation.phantom import SHEPP_LOGAN_3D, Ellipsoid, grid_coordinates, sample_offsets

FloatArray = npt.NDArray[np.float32]

# What :func:`project_ellipsoids` holds at its peak, per pixel of every angle's projection:
# the float64 sum, each ellipsoid's float64 rays and their temporaries, then the float32
# result (measured with tracemalloc: 40.1 to 40.7 bytes).
PEAK_BYTES_PER_PIXEL = 41


class ProjectionTooLarge(ValueError):
    """The projections asked for cannot fit this machine's memory; the message has the figures."""


def projection_peak_bytes(n_angles: int, n_rows: int, n_cols: int) -> int:
    """The memory :func:`project_ellipsoids` needs at its peak for ``n_angles`` projections of
    ``n_rows`` x ``n_cols`` pixels."""
    return int(n_angles) * int(n_rows) * int(n_cols) * PEAK_BYTES_PER_PIXEL


def memory_limit_bytes() -> int:
    """What a projection may need at most: this machine's memory (more fails anyway,
    with numpy's ``MemoryError`` or the kernel's OOM killer)."""
    from streamtomo.pipeline.streaming.memory_budget import machine_memory_bytes

    return machine_memory_bytes()


def check_projection_size(n_angles: int, n_rows: int, n_cols: int) -> None:
    """Raise :class:`ProjectionTooLarge` when the projections would not fit this machine's memory."""
    from streamtomo.pipeline.streaming.memory_budget import size_text

    needed, limit = projection_peak_bytes(n_angles, n_rows, n_cols), memory_limit_bytes()
    if needed > limit:
        raise ProjectionTooLarge(
            f"projecting {n_angles} angles x {n_rows} rows x {n_cols} columns needs about {size_text(needed)} "
            f"of memory, more than this machine's {size_text(limit)}"
        )


def project_ellipsoids(
    ellipsoids: tuple[Ellipsoid, ...],
    n_rows: int,
    n_cols: int,
    angles_deg: npt.ArrayLike,
    center: float | None = None,
    *,
    phantom_size: int | None = None,
    oversample: int = 1,
    rows: npt.ArrayLike | None = None,
) -> FloatArray:
    """Exact line integrals of z-rotated ellipsoids -> (A, n_rows, n_cols) float32.

    The normalised phantom's unit is phantom_size/2 pixels in every direction
    (default n_cols; row n_rows//2 is z = 0), matching
    ``shepp_logan_3d(phantom_size)``. ``center`` defaults to n_cols//2, the
    axis ``iradon`` assumes. ``oversample`` > 1 averages oversample^2 rays
    per detector pixel (its area, as a real pixel integrates), which removes
    the aliasing of sharp edges that point sampling gives. ``rows`` picks
    detector rows to compute, giving (A, len(rows), n_cols).
    """
    angles = np.radians(np.asarray(angles_deg, dtype=np.float64).ravel())
    scale = (n_cols if phantom_size is None else phantom_size) / 2.0
    axis = float(n_cols // 2) if center is None else float(center)
    cos_t = np.cos(angles)[:, None, None]
    sin_t = np.sin(angles)[:, None, None]
    row_z = grid_coordinates(n_rows, scale)
    if rows is not None:
        row_z = row_z[np.asarray(rows, dtype=np.intp).ravel()]
    check_projection_size(angles.size, row_z.size, n_cols)  # before the arrays: not numpy's MemoryError
    out = np.zeros((angles.size, row_z.size, n_cols), dtype=np.float64)
    for ot in sample_offsets(oversample):
        t = ((np.arange(n_cols) + ot - axis) / scale)[None, None, :]  # (1, 1, C)
        for oz in sample_offsets(oversample):
            z = (row_z + oz / scale)[None, :, None]  # (1, R, 1)
            out += _ellipsoid_rays(ellipsoids, angles, t, z, cos_t, sin_t)
    return (out * (scale / oversample**2)).astype(np.float32)  # normalised -> pixels


def _ellipsoid_rays(
    ellipsoids: tuple[Ellipsoid, ...],
    angles: npt.NDArray[np.float64],
    t: npt.NDArray[np.float64],
    z: npt.NDArray[np.float64],
    cos_t: npt.NDArray[np.float64],
    sin_t: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    out = np.zeros((angles.size, z.shape[1], t.shape[2]), dtype=np.float64)
    for e in ellipsoids:
        # A z-plane cuts the ellipsoid in the ellipse (a s, b s), s^2 = 1 - ((z-z0)/c)^2;
        # a chord of that ellipse at distance tau from its centre has length
        # 2 a b sqrt(s^2 alpha^2 - tau^2) / alpha^2 (Kak & Slaney eq. 3.49 scaled).
        s2 = 1.0 - ((z - e.z0) / e.c) ** 2
        rel = angles[:, None, None] - math.radians(e.phi_deg)
        alpha2 = (e.a * np.cos(rel)) ** 2 + (e.b * np.sin(rel)) ** 2
        tau = t - (e.x0 * cos_t + e.y0 * sin_t)
        chord2 = s2 * alpha2 - tau**2
        out += (2.0 * e.density * e.a * e.b / alpha2) * np.sqrt(np.maximum(chord2, 0.0))
    return out


def project_shepp_logan_3d(
    n_rows: int,
    n_cols: int,
    angles_deg: npt.ArrayLike,
    center: float | None = None,
    *,
    phantom_size: int | None = None,
    oversample: int = 1,
    rows: npt.ArrayLike | None = None,
) -> FloatArray:
    """Analytic projections (A, n_rows, n_cols) of :func:`streamtomo.pipeline.simulation.phantom.shepp_logan_3d`."""
    return project_ellipsoids(
        SHEPP_LOGAN_3D,
        n_rows,
        n_cols,
        angles_deg,
        center,
        phantom_size=phantom_size,
        oversample=oversample,
        rows=rows,
    )


def project_volume(volume: npt.ArrayLike, angles_deg: npt.ArrayLike, center: float | None = None) -> FloatArray:
    """Numerical projections (A, Z, N) of a (Z, N, N) volume: rotate, then sum.

    Each slice is resampled (linear) on a rotated grid whose columns are
    detector positions and whose rows run along the ray at a 1-pixel step, so
    the sum is the line integral in pixels. ``center`` defaults to N//2.
    """
    data = np.asarray(volume, dtype=np.float32)
    if data.ndim != 3 or data.shape[1] != data.shape[2]:
        raise ValueError(f"volume must be (Z, N, N), got shape {data.shape}")
    n_z, n, _ = data.shape
    half = n // 2
    axis = float(half) if center is None else float(center)
    n_ray = math.ceil(n * math.sqrt(2.0)) + 2  # covers the slice's diagonal
    s_mid = n_ray // 2
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    out = np.empty((angles.size, n_z, n), dtype=np.float32)
    for index, theta in enumerate(np.radians(angles)):
        c, s = math.cos(theta), math.sin(theta)
        # output (k, a, b): t = b - axis, ray step r = a - s_mid;
        # x = t cos - r sin, y = t sin + r cos; input row = half - y, column = half + x.
        matrix = np.array([[1.0, 0.0, 0.0], [0.0, -c, -s], [0.0, -s, c]])
        offset = np.array([0.0, half + s_mid * c + axis * s, half + s_mid * s - axis * c])
        rotated = scipy.ndimage.affine_transform(
            data, matrix, offset, output_shape=(n_z, n_ray, n), order=1, mode="constant"
        )
        out[index] = rotated.sum(axis=1)
    return out
