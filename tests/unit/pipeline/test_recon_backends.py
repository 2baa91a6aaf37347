"""The same contract for every reconstruction backend installed here.

One base class holds the cases; each backend is a subclass that only names
it, and skips when its library is missing (as h5grove tests its backends).
Agreement is measured inside the inscribed circle (outside it, engines differ
legitimately in what they read off the detector) and after a 1-px Gaussian blur:
engines interpolate differently (linear at half-pixel positions blurs, a Fourier
shift rings), which a blur removes, while a centre 0.5 px off still drops the
correlation to 0.97. Unblurred, ours must match ``direct`` to 0.99.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage
from skimage.transform import iradon

import streamtomo.pipeline.reconstruction.backends as recon
from streamtomo.pipeline.reconstruction.backends import (
    AngularCoverageWarning,
    BackendNotInstalledError,
    ReconBackend,
    available_backends,
    get_backend,
    installed_backends,
)
from streamtomo.pipeline.reconstruction.backends.tomopy_backend import gridrec_axis_pixel, gridrec_gain
from streamtomo.pipeline.reconstruction.fbp import fbp
from streamtomo.pipeline.reconstruction.filters import FILTER_NAMES
from streamtomo.pipeline.simulation.phantom import shepp_logan_3d
from streamtomo.pipeline.simulation.projector import project_shepp_logan_3d

N = 64
ANGLES = np.linspace(0.0, 180.0, 96, endpoint=False)
ROWS = [24, 28, 32]  # around z = -0.25 of a 64-voxel phantom: the features


def circle(n: int) -> npt.NDArray[np.bool_]:
    yy, xx = np.mgrid[:n, :n]
    return np.asarray((yy - n // 2) ** 2 + (xx - n // 2) ** 2 <= (n // 2 - 1) ** 2)


def agreement(
    result: npt.NDArray[np.float32], reference: npt.NDArray[np.float32], blur: float = 1.0
) -> tuple[float, float]:
    """(correlation, least-squares scale of result against reference) inside the circle."""
    if blur:
        sigma = (0.0,) * (result.ndim - 2) + (blur, blur)
        result, reference = ndimage.gaussian_filter(result, sigma), ndimage.gaussian_filter(reference, sigma)
    mask = circle(reference.shape[-1])
    a = result[..., mask].ravel().astype(np.float64)
    b = reference[..., mask].ravel().astype(np.float64)
    return float(np.corrcoef(a, b)[0, 1]), float((a * b).sum() / (b * b).sum())


def sinogram(
    center: float | None = None, angles: npt.NDArray[np.float64] = ANGLES, size: int = 56
) -> npt.NDArray[np.float32]:
    """(3, A, 64) rows of a ``size``-px phantom around the axis; 56 px stays on the detector."""
    sino = project_shepp_logan_3d(N, N, angles, center, phantom_size=size, oversample=2, rows=ROWS)
    return np.ascontiguousarray(sino.transpose(1, 0, 2))


class BackendContract:
    name = "direct"
    raw_correlation = 0.99  # unblurred agreement with direct; engines with other interpolation: less

    @pytest.fixture
    def backend(self) -> ReconBackend:
        if self.name not in installed_backends():
            pytest.skip(f"backend {self.name!r} is not installed here")
        return get_backend(self.name)

    def test_shapes_and_dtype(self, backend: ReconBackend) -> None:
        sino = sinogram()
        stack = backend.reconstruct(sino, ANGLES, N // 2)
        assert stack.shape == (3, N, N) and stack.dtype == np.float32
        single = backend.reconstruct(sino[1], ANGLES, N // 2)
        assert single.shape == (N, N) and single.dtype == np.float32
        np.testing.assert_allclose(single, stack[1], atol=1e-4 * float(np.abs(stack).max()))
        assert backend.reconstruct(sino, ANGLES, N // 2, slice_size=48).shape == (3, 48, 48)

    @pytest.mark.parametrize("center", [32.0, 29.25, 34.5])
    def test_agrees_with_direct(self, backend: ReconBackend, center: float) -> None:
        sino = sinogram(center)
        result, reference = backend.reconstruct(sino, ANGLES, center), fbp(sino, ANGLES, center)
        corr, scale = agreement(result, reference)
        assert corr >= 0.99
        assert scale == pytest.approx(1.0, abs=0.02)
        assert agreement(result, reference, blur=0.0)[0] >= self.raw_correlation

    def test_axis_near_the_detector_edge(self, backend: ReconBackend) -> None:
        center = 20.25  # a 40-px object around it still fits on the detector
        sino = sinogram(center, size=36)
        result = backend.reconstruct(sino, ANGLES, center, slice_size=40)
        corr, scale = agreement(result, fbp(sino, ANGLES, center, slice_size=40))
        assert corr >= 0.99 and scale == pytest.approx(1.0, abs=0.02)

    @pytest.mark.parametrize("filter_name", FILTER_NAMES)
    def test_every_filter(self, backend: ReconBackend, filter_name: str) -> None:
        sino = sinogram()
        result = backend.reconstruct(sino, ANGLES, N // 2, filter_name=filter_name)
        corr, scale = agreement(result, fbp(sino, ANGLES, N // 2, filter_name=filter_name))
        assert corr >= 0.99 and scale == pytest.approx(1.0, abs=0.02)

    def test_reconstructs_the_phantom(self, backend: ReconBackend) -> None:
        truth = shepp_logan_3d(N, oversample=2, planes=ROWS)
        result = backend.reconstruct(sinogram(size=N), ANGLES, N // 2)
        mask = circle(N)
        rmse = float(np.sqrt(np.mean((result[:, mask] - truth[:, mask]) ** 2)))
        assert rmse < 0.12  # the phantom's features are 0.1-0.2 above their background

    def test_full_turn_equals_half_turn(self, backend: ReconBackend) -> None:
        full = np.linspace(0.0, 360.0, 192, endpoint=False)  # each half-turn angle and its mirror
        half = backend.reconstruct(sinogram(), ANGLES, N // 2)
        turn = backend.reconstruct(sinogram(angles=full), full, N // 2)
        corr, scale = agreement(turn, half)
        assert corr >= 0.995 and scale == pytest.approx(1.0, abs=0.02)

    def test_missing_angles_weighted_like_direct(self, backend: ReconBackend) -> None:
        keep = np.ones(ANGLES.size, bool)
        keep[[3, 4, 5, 40, 70]] = False  # lost frames
        sino = sinogram()[:, keep]
        corr, scale = agreement(backend.reconstruct(sino, ANGLES[keep], N // 2), fbp(sino, ANGLES[keep], N // 2))
        assert corr >= 0.99 and scale == pytest.approx(1.0, abs=0.02)

    def test_unknown_filter_lists_the_allowed(self, backend: ReconBackend) -> None:
        with pytest.raises(ValueError, match="unknown filter 'cosine'; allowed: ramp, shepp-logan, hann"):
            backend.reconstruct(sinogram(), ANGLES, N // 2, filter_name="cosine")

    @pytest.mark.parametrize("center", [-0.5, 64.0, float("nan")])
    def test_centre_off_the_detector_names_the_range(self, backend: ReconBackend, center: float) -> None:
        with pytest.raises(ValueError, match=r"outside the detector; allowed: 0 \.\. 63"):
            backend.reconstruct(sinogram(), ANGLES, center)

    def test_angles_short_of_180_warn(self, backend: ReconBackend) -> None:
        part = ANGLES < 120.0
        with pytest.warns(AngularCoverageWarning, match=r"cover only 120\.0 of 180 degrees"):
            backend.reconstruct(sinogram()[:, part], ANGLES[part], N // 2)

    def test_mismatched_angles_rejected(self, backend: ReconBackend) -> None:
        with pytest.raises(ValueError, match="95 angles for 96 projections"):
            backend.reconstruct(sinogram(), ANGLES[:-1], N // 2)


def iradon_stack(
    sino: npt.NDArray[np.float32], angles: npt.NDArray[np.float64], size: int = N, filter_name: str = "ramp"
) -> npt.NDArray[np.float32]:
    """scikit-image's FBP of each (A, 64) row, axis at column 32 (its ``C // 2``)."""
    slices = [
        iradon(row.T.astype(np.float64), angles, circle=False, output_size=size, filter_name=filter_name)  # type: ignore[no-untyped-call]
        for row in sino
    ]
    return np.stack(slices).astype(np.float32)


def rel_err_in_circle(result: npt.NDArray[np.float32], reference: npt.NDArray[np.float32]) -> float:
    """Largest difference inside the circle, relative to the reference's largest value there.

    Outside it the two legitimately differ: iradon reads zeros past the detector's
    edge where ours leaves the pixel out.
    """
    mask = circle(reference.shape[-1])
    return float(np.abs(result - reference)[..., mask].max() / np.abs(reference[..., mask]).max())


class TestDirect(BackendContract):
    """``direct`` is :func:`fbp` itself: the contract's fbp reference would compare it with
    itself, so the cases that measure agreement use independent references here:
    scikit-image's ``iradon`` and angular weights worked out by hand."""

    name = "direct"

    @pytest.mark.parametrize("center", [32.0, 29.25, 34.5])
    def test_agrees_with_direct(self, backend: ReconBackend, center: float) -> None:
        # The projector puts the same phantom's axis at ``center``; iradon only knows
        # column 32, so its reference is the projection with the axis there. The
        # engines interpolate at different positions off the middle (hence the blur,
        # as in the contract); a centre 0.5 px off drops the correlation to 0.97.
        result = backend.reconstruct(sinogram(center), ANGLES, center)
        reference = iradon_stack(sinogram(), ANGLES)
        corr, scale = agreement(result, reference)
        assert corr >= 0.99
        assert scale == pytest.approx(1.0, abs=0.02)
        if center == N // 2:  # same grid as iradon: the same numbers, not only alike
            assert rel_err_in_circle(result, reference) < 1e-5

    def test_axis_near_the_detector_edge(self, backend: ReconBackend) -> None:
        center = 20.25  # a 40-px object around it still fits on the detector
        result = backend.reconstruct(sinogram(center, size=36), ANGLES, center, slice_size=40)
        corr, scale = agreement(result, iradon_stack(sinogram(size=36), ANGLES, size=40))
        assert corr >= 0.99 and scale == pytest.approx(1.0, abs=0.02)

    @pytest.mark.parametrize("filter_name", FILTER_NAMES)
    def test_every_filter(self, backend: ReconBackend, filter_name: str) -> None:
        # As tests/unit/pipeline/test_fbp.py: the same filter, geometry and scale as
        # iradon. Our Hann window is the symmetric one (0.5 % apart); the nearest other
        # filter is 10 % (ramp against shepp-logan) or 30 % (against hann) apart.
        sino = sinogram()
        result = backend.reconstruct(sino, ANGLES, N // 2, filter_name=filter_name)
        reference = iradon_stack(sino, ANGLES, filter_name=filter_name)
        assert agreement(result, reference, blur=0.0)[0] >= 0.999
        assert rel_err_in_circle(result, reference) < (0.01 if filter_name == "hann" else 1e-5)

    def test_missing_angles_weighted_like_direct(self, backend: ReconBackend) -> None:
        keep = np.ones(ANGLES.size, bool)
        keep[[3, 4, 5, 40, 70]] = False  # lost frames
        angles = ANGLES[keep]
        sino = sinogram()[:, keep]
        # By hand: each angle owns half the gap to each neighbour on the half turn,
        # halved (the ramp's factor 2); a complete scan's pi/(2n) each for comparison.
        gaps = np.radians(np.diff(np.append(angles, angles[0] + 180.0)))
        weights = 0.5 * (gaps + np.roll(gaps, 1)) / 2.0
        assert weights.sum() == pytest.approx(np.pi / 2)
        assert weights.max() == pytest.approx(2.5 * np.pi / (2 * ANGLES.size))  # beside the 3-frame gap
        # iradon weights every projection pi/(2n) and is linear: scaling projection i
        # by weights[i] * 2n/pi gives the sum of weights[i] x its filtered backprojection.
        scaled = sino * (weights * 2.0 * angles.size / np.pi).astype(np.float32)[:, None]
        reference = iradon_stack(scaled, angles)
        result = backend.reconstruct(sino, angles, N // 2)
        assert rel_err_in_circle(result, reference) < 1e-5  # equal weights: 13 % off


class TestFourier(BackendContract):
    name = "fourier"


class TestDefault(BackendContract):
    name = "default"


class TestSkimage(BackendContract):
    raw_correlation = 0.95
    name = "skimage"


class TestAstra(BackendContract):
    raw_correlation = 0.95
    name = "astra"


class TestTomopyGridrec(BackendContract):
    raw_correlation = 0.95
    name = "tomopy-gridrec"


class TestTomopyFbp(BackendContract):
    raw_correlation = 0.95
    name = "tomopy-fbp"


# -- registry ---------------------------------------------------------------------------


def test_unknown_backend_lists_the_names() -> None:
    with pytest.raises(
        ValueError, match="unknown reconstruction backend 'gridrec'; available: default, fourier, direct"
    ):
        get_backend("gridrec")
    assert set(available_backends()) == {
        "default",
        "fourier",
        "direct",
        "tomopy-gridrec",
        "tomopy-fbp",
        "astra",
        "skimage",
    }


def test_missing_library_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(recon._REQUIREMENTS, "astra", ("astra_is_not_here", "pip install astra-toolbox"))
    assert "astra" not in installed_backends()
    with pytest.raises(BackendNotInstalledError, match="pip install astra-toolbox"):
        get_backend("astra")


@pytest.mark.skipif("tomopy-gridrec" in installed_backends(), reason="tomopy is installed here")
def test_tomopy_missing_points_to_conda() -> None:
    with pytest.raises(BackendNotInstalledError, match="conda install -c conda-forge tomopy"):
        get_backend("tomopy-gridrec")


def test_default_is_fourier_when_ducc0_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = "fourier" if "fourier" in installed_backends() else "direct"
    assert recon.resolve_name("default") == expected
    monkeypatch.setitem(recon._REQUIREMENTS, "fourier", ("ducc0_is_not_here", "pip install ducc0"))
    assert recon.resolve_name("default") == "direct"
    assert get_backend("default").name == "direct"


def test_reconstruct_shortcut_and_name_spelling() -> None:
    sino = sinogram()
    np.testing.assert_allclose(
        recon.reconstruct(sino, ANGLES, N // 2, backend="DIRECT"), fbp(sino, ANGLES, N // 2), atol=1e-6
    )


def test_importing_the_registry_pulls_in_no_engine() -> None:
    heavy = ("ducc0", "astra", "tomopy", "skimage", "numba", "h5py")
    code = (
        "import sys, json, streamtomo.pipeline.reconstruction.backends, streamtomo.pipeline.reconstruction.cor, streamtomo.pipeline.reconstruction.preprocess, streamtomo.pipeline.reconstruction.live_views; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_complete_angles_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recon.common.warn_if_incomplete(np.concatenate([ANGLES, ANGLES[::-1]]))  # back-and-forth
        recon.common.warn_if_incomplete(np.linspace(0.0, 360.0, 50, endpoint=False))


# -- tomopy gridrec's geometry and grey scale as derived from its source, without tomopy ----


def test_gridrec_axis_pixel_is_one_row_above_the_middle() -> None:
    # gridrec.c: off = P/2 - (P - ng)//2 goes to column off and row ng - 1 - off
    assert gridrec_axis_pixel(126, 128) == (62, 63)
    assert gridrec_axis_pixel(66, 128) == (32, 33)
    assert gridrec_axis_pixel(65, 128) == (31, 33)
    with pytest.raises(ValueError, match="n_grid <= fft_size - 2"):
        gridrec_axis_pixel(128, 128)  # gridrec would read past its winv table


def test_gridrec_gain() -> None:
    gain = gridrec_gain(130, 256)
    _, axis = gridrec_axis_pixel(130, 256)
    assert 2.0 * gain[axis] ** 2 == pytest.approx(1.119, abs=1e-3)  # 2 K^(0)^2 norm^2
    assert gain[axis + 47] / gain[axis] == pytest.approx(1.116, abs=1e-3)
    assert gain[axis - 47] / gain[axis] == pytest.approx(1.075, abs=1e-3)
