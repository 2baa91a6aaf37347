"""3D Shepp-Logan phantom and forward projectors: values, geometry, round trip through FBP."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from streamtomo.pipeline.reconstruction.fbp import fbp
from streamtomo.pipeline.simulation.phantom import shepp_logan_3d
from streamtomo.pipeline.simulation.projector import project_shepp_logan_3d, project_volume

N = 128
PLANES = np.arange(N // 2 - N // 8 - 2, N // 2 - N // 8 + 3)  # around z = -0.25, the features


def test_phantom_values_and_shape() -> None:
    volume = shepp_logan_3d(32)
    assert volume.shape == (32, 32, 32) and volume.dtype == np.float32
    assert volume.min() >= -1e-6 and volume.max() == pytest.approx(1.0)
    assert volume[0].max() == 0.0  # z = -1 lies outside the skull
    np.testing.assert_array_equal(shepp_logan_3d(32, planes=[5, 16])[1], volume[16])


def test_oversampling_averages_the_same_object() -> None:
    sharp = shepp_logan_3d(48)
    smooth = shepp_logan_3d(48, oversample=3)
    assert smooth.sum() == pytest.approx(sharp.sum(), rel=0.02)
    assert np.mean(np.abs(smooth - sharp) > 1e-5) < 0.2  # only voxels on an edge change...
    assert smooth.min() >= -1e-6 and smooth.max() <= 1.0 + 1e-6  # ...to an average


def test_analytic_projection_conserves_mass() -> None:
    angles = np.linspace(0.0, 180.0, 12, endpoint=False)
    proj = project_shepp_logan_3d(N, N, angles, rows=PLANES, oversample=4)
    mass = shepp_logan_3d(N, oversample=4, planes=PLANES).sum(axis=(1, 2))
    np.testing.assert_allclose(proj.sum(axis=2), np.broadcast_to(mass, (12, PLANES.size)), rtol=2e-3)


def test_numerical_projector_geometry() -> None:
    slab = shepp_logan_3d(64, planes=[20])
    proj = project_volume(slab, [0.0, 90.0])[:, 0]
    # 0 degrees integrates down the columns; 90 degrees along rows, top row at the far end.
    np.testing.assert_allclose(proj[0], slab[0].sum(axis=0), atol=1e-4)
    np.testing.assert_allclose(proj[1, 1:], slab[0].sum(axis=1)[1:][::-1], atol=1e-3)


def test_analytic_and_numerical_projections_agree() -> None:
    angles = np.linspace(0.0, 180.0, 24, endpoint=False)
    analytic = project_shepp_logan_3d(N, N, angles, rows=PLANES[::2], oversample=4)
    numerical = project_volume(shepp_logan_3d(N, oversample=4, planes=PLANES[::2]), angles)
    assert np.linalg.norm(numerical - analytic) / np.linalg.norm(analytic) < 0.02


@pytest.mark.parametrize("filter_name", ["ramp", "shepp-logan", "hann"])
def test_fbp_of_the_projections_recovers_the_phantom(filter_name: str) -> None:
    # A detector wide enough for the slice's diagonal (192 >= 128 * sqrt 2), pixels that
    # integrate their area, and a phantom with partial-volume voxels: what a scan sees.
    angles = np.linspace(0.0, 180.0, 180, endpoint=False)
    proj = project_shepp_logan_3d(N, 192, angles, phantom_size=N, oversample=4, rows=PLANES)
    slices = fbp(proj.transpose(1, 0, 2), angles, 96.0, filter_name=filter_name, slice_size=N)
    truth = shepp_logan_3d(N, oversample=4, planes=PLANES)
    data_range = float(truth.max() - truth.min())
    for recon, reference in zip(slices, truth, strict=True):
        score = structural_similarity(reference, recon, data_range=data_range)  # type: ignore[no-untyped-call]
        assert score >= 0.9
