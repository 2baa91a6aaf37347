"""Reconstruction numerics: filters, backprojection kernels, streaming vs offline FBP."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage
from skimage.transform import iradon

from streamtomo.pipeline.reconstruction.backprojection import backproject_batch_into, backproject_into, numba_available
from streamtomo.pipeline.reconstruction.fbp import StreamingFBP, angular_weights, fbp, weight_partial_sum
from streamtomo.pipeline.reconstruction.filters import FILTER_NAMES, ProjectionFilter, padded_size
from streamtomo.pipeline.simulation.projector import project_shepp_logan_3d

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba is not installed")


def rel_err(result: npt.NDArray[np.floating], reference: npt.NDArray[np.floating]) -> float:
    return float(np.abs(result - reference).max() / np.abs(result).max())


def correlation(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def phantom_sinogram() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """(K=3, A=90, C=96) analytic Shepp-Logan sinogram, axis at column 48."""
    angles = np.linspace(0.0, 180.0, 90, endpoint=False)
    rows = [40, 44, 48]  # z around -0.25: the features
    sino = project_shepp_logan_3d(96, 96, angles, rows=rows, oversample=2)
    return np.ascontiguousarray(sino.transpose(1, 0, 2)), angles


# -- filters ---------------------------------------------------------------------------


def test_unknown_filter_lists_allowed_names() -> None:
    with pytest.raises(ValueError, match="unknown filter 'cosine'; allowed: ramp, shepp-logan, hann"):
        ProjectionFilter(64, "cosine")
    with pytest.raises(ValueError, match="allowed"):
        fbp(np.zeros((4, 16)), np.arange(4.0), 8.0, filter_name="hamming")


@pytest.mark.parametrize(("cols", "size"), [(1, 64), (32, 64), (33, 128), (640, 2048), (1024, 2048)])
def test_padding_is_power_of_two_at_least_twice_the_row(cols: int, size: int) -> None:
    assert padded_size(cols) == size


def test_ramp_equals_direct_spatial_convolution() -> None:
    # Kak & Slaney eq. 61: h(0) = 1/4, h(odd n) = -1/(pi n)^2, times iradon's factor 2.
    rng = np.random.default_rng(1)
    row = rng.standard_normal(50)
    n = np.arange(-49, 50)
    h = np.where(n == 0, 0.25, np.where(n % 2 == 1, -1.0 / (np.pi * np.where(n == 0, 1, n)) ** 2, 0.0))
    direct = 2.0 * np.convolve(row, h)[49:99]  # h is centred at index 49
    np.testing.assert_allclose(ProjectionFilter(50, "ramp").apply(row), direct, atol=2e-5)


@pytest.mark.parametrize("name", FILTER_NAMES)
def test_filters_equal_frequency_formulas(name: str) -> None:
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((3, 40))
    size = padded_size(40)
    f = np.abs(np.fft.fftfreq(size))  # cycles per sample
    ramp = 2.0 * np.fft.fft(np.fft.ifftshift(_ramp_kernel_centered(size))).real
    window = {"ramp": np.ones_like(f), "shepp-logan": np.sinc(f), "hann": 0.5 * (1 + np.cos(2 * np.pi * f))}[name]
    expected = np.fft.ifft(np.fft.fft(rows, n=size) * ramp * window).real[:, :40]
    np.testing.assert_allclose(ProjectionFilter(40, name).apply(rows), expected, atol=2e-5)


def _ramp_kernel_centered(size: int) -> npt.NDArray[np.float64]:
    n = np.arange(size) - size // 2
    odd = n % 2 == 1
    h = np.zeros(size)
    h[size // 2] = 0.25
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    return h


def test_filter_is_vectorised_over_leading_axes() -> None:
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((2, 3, 30)).astype(np.float32)
    filt = ProjectionFilter(30, "hann")
    out = filt.apply(rows)
    assert out.shape == rows.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[1, 2], filt.apply(rows[1, 2]), atol=1e-6)
    with pytest.raises(ValueError, match="30 columns"):
        filt.apply(np.zeros((2, 31)))


# -- backprojection ----------------------------------------------------------------------


@needs_numba
@pytest.mark.parametrize("angle", [0.0, 37.3, 90.0, 180.0, 271.1])
@pytest.mark.parametrize(("size", "center"), [(64, 32.0), (48, 27.25), (96, 30.5)])
def test_numba_and_numpy_kernels_agree(angle: float, size: int, center: float) -> None:
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((3, 64)).astype(np.float32)
    results = []
    for backend in ("numba", "numpy"):
        out = np.full((3, size, size), 0.5, dtype=np.float32)  # adds to what is there
        backproject_into(out, rows, angle, center, weight=0.7, backend=backend)
        results.append(out)
    np.testing.assert_allclose(results[0], results[1], atol=1e-5 * float(np.abs(results[1]).max()))


@pytest.mark.parametrize("backend", [pytest.param("numba", marks=needs_numba), "numpy"])
def test_a_batch_of_projections_sums_like_one_call_each_bit_for_bit(backend: str) -> None:
    rng = np.random.default_rng(5)
    angles = [0.0, 37.3, 90.0, 180.0, 271.1, -45.0]
    rows = [rng.standard_normal((2, 50)).astype(np.float32) for _ in angles]
    weights = [0.7, 1.0, -1.0, 0.3, 2.0, 1.0]
    one_by_one = np.full((2, 64, 64), 0.5, dtype=np.float32)
    for r, angle, weight in zip(rows, angles, weights, strict=True):
        backproject_into(one_by_one, r, angle, 24.75, weight, backend=backend)  # type: ignore[arg-type]
    batched = np.full((2, 64, 64), 0.5, dtype=np.float32)
    backproject_batch_into(batched, rows[:4], angles[:4], 24.75, weights[:4], backend=backend)  # type: ignore[arg-type]
    backproject_batch_into(batched, rows[4:], angles[4:], 24.75, weights[4:], backend=backend)  # type: ignore[arg-type]
    np.testing.assert_array_equal(batched, one_by_one)


@pytest.mark.parametrize("backend", [pytest.param("numba", marks=needs_numba), "numpy"])
def test_pixels_off_the_detector_get_nothing(backend: str) -> None:
    # At 0 degrees pixel column j reads detector column center + j - N//2.
    out = np.zeros((1, 40, 40), dtype=np.float32)
    backproject_into(out, np.ones((1, 20), np.float32), 0.0, center=10.0, backend=backend)  # type: ignore[arg-type]
    expected = np.zeros(40)
    expected[10:30] = 1.0
    np.testing.assert_array_equal(out[0], np.broadcast_to(expected, (40, 40)))


def test_backproject_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="filtered_rows"):
        backproject_into(np.zeros((2, 8, 8), np.float32), np.zeros((3, 8), np.float32), 0.0, 4.0)
    with pytest.raises(TypeError, match="float32"):
        backproject_into(np.zeros((1, 8, 8)), np.zeros((1, 8)), 0.0, 4.0)  # type: ignore[arg-type]


# -- against scikit-image -------------------------------------------------------------------


@pytest.mark.parametrize("name", FILTER_NAMES)
def test_matches_iradon_axis_in_the_middle(
    phantom_sinogram: tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]], name: str
) -> None:
    sino, angles = phantom_sinogram
    ours = fbp(sino[1], angles, 48.0, filter_name=name)
    theirs = iradon(sino[1].T.astype(np.float64), angles, circle=False, output_size=96, filter_name=name)  # type: ignore[no-untyped-call]
    assert correlation(ours, theirs) >= 0.999
    if name != "hann":  # same filter, geometry and scale; our Hann window is the symmetric one
        assert rel_err(ours, theirs) < 1e-5


def test_matches_iradon_off_centre_axis() -> None:
    angles = np.linspace(0.0, 180.0, 90, endpoint=False)
    center = 57.0  # 7 columns left of iradon's 128 // 2; the slice's diagonal stays on the detector
    sino = project_shepp_logan_3d(96, 128, angles, center=center, phantom_size=80, rows=[40])[:, 0]
    ours = fbp(sino, angles, center, slice_size=80)
    shifted = np.roll(sino, 64 - int(center), axis=1)  # only empty columns wrap round
    theirs = iradon(shifted.T.astype(np.float64), angles, circle=False, output_size=80)  # type: ignore[no-untyped-call]
    assert correlation(ours, theirs) >= 0.999
    assert rel_err(ours, theirs) < 1e-5


def test_tooth_matches_iradon(tooth_h5: Path) -> None:
    with h5py.File(tooth_h5, "r") as f:
        data = f["exchange/data"][()]
        flat = f["exchange/data_white"][()].mean(axis=0)
        dark = f["exchange/data_dark"][()].mean(axis=0)
        theta = f["exchange/theta"][()]
    ratio = (data - dark) / np.maximum(flat - dark, 1e-6)
    sino = -np.log(np.clip(ratio, 1e-6, None)).transpose(1, 0, 2)  # (2, 181, 640)
    center = 288.5
    ours = fbp(sino, theta, center)
    assert ours.shape == (2, 640, 640) and ours.dtype == np.float32
    # iradon wants the axis at column 320: move it there (cubic spline, half-pixel shift).
    shifted = ndimage.shift(sino[0].astype(np.float64), (0, 320 - center), order=3, mode="constant")
    theirs = iradon(shifted.T, theta, circle=False, output_size=640)  # type: ignore[no-untyped-call]
    assert correlation(ours[0], theirs) >= 0.99


# -- streaming ------------------------------------------------------------------------------


def stream(
    sino: npt.NDArray[np.float32],
    angles: npt.NDArray[np.float64],
    order: npt.NDArray[np.intp],
    n_workers: int,
    **kwargs: object,
) -> list[StreamingFBP]:
    n_slices, _, n_cols = sino.shape
    workers = [StreamingFBP(n_cols, 48.0, n_slices=n_slices, **kwargs) for _ in range(n_workers)]  # type: ignore[arg-type]
    for i, index in enumerate(order):
        workers[i % n_workers].add(sino[:, index, :], float(angles[index]))
    return workers


def test_streamed_in_shuffled_order_over_three_workers_equals_offline(
    phantom_sinogram: tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]],
) -> None:
    sino, angles = phantom_sinogram
    offline = fbp(sino, angles, 48.0)
    order = np.random.default_rng(5).permutation(angles.size)
    workers = stream(sino, angles, order, 3)
    merged = workers[0].merge(workers[1]).merge(workers[2])
    assert merged.n_projections == angles.size
    streamed = merged.result()
    assert streamed.shape == offline.shape and streamed.dtype == np.float32
    assert rel_err(streamed, offline) <= 1e-4
    # The reducer's way: sum raw partials and counts, weight once.
    again = stream(sino, angles, order, 3)
    summed = sum((w.partial for w in again), np.zeros_like(offline))
    reduced = weight_partial_sum(summed, sum(w.n_projections for w in again))
    assert rel_err(reduced, offline) <= 1e-4


def test_merge_of_three_partials_equals_one_instance(
    phantom_sinogram: tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]],
) -> None:
    sino, angles = phantom_sinogram
    order = np.arange(angles.size)
    single = stream(sino, angles, order, 1)[0]
    parts = stream(sino, angles, order, 3)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.n_projections == single.n_projections
    np.testing.assert_allclose(merged.partial, single.partial, atol=1e-5 * float(np.abs(single.partial).max()))
    np.testing.assert_allclose(merged.result(), single.result(), atol=1e-5 * float(np.abs(single.result()).max()))


def test_merge_refuses_other_geometry() -> None:
    a = StreamingFBP(32, 16.0, n_slices=2)
    with pytest.raises(ValueError, match="geometry"):
        a.merge(StreamingFBP(32, 15.0, n_slices=2))
    with pytest.raises(ValueError, match="filter"):
        a.merge(StreamingFBP(32, 16.0, n_slices=2, filter_name="hann"))


def test_irregular_scan_streamed_with_expected_angles_equals_offline(
    phantom_sinogram: tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]],
) -> None:
    sino, angles = phantom_sinogram
    keep = np.ones(angles.size, bool)
    keep[[5, 30, 31, 61]] = False  # dropped frames
    irregular = np.concatenate([angles[keep], [180.0, 180.0 + angles[10]]])  # plus mirrored duplicates
    data = np.concatenate([sino[:, keep], sino[:, :1, ::-1], sino[:, 10:11, ::-1]], axis=1)
    # The mirror of column c about axis 48 is 96 - c: shift the flipped rows by one column.
    data[:, -2:] = np.roll(data[:, -2:], 1, axis=-1)
    offline = fbp(data, irregular, 48.0)
    order = np.random.default_rng(6).permutation(irregular.size)
    workers = stream(data, irregular, order, 3, expected_angles_deg=irregular)
    streamed = workers[0].merge(workers[1]).merge(workers[2]).result()
    assert rel_err(streamed, offline) <= 1e-4
    # ...it still looks like the complete scan, more so than with every projection alike.
    complete = fbp(sino, angles, 48.0)
    alike = stream(data, irregular, order, 1)[0].result()
    assert correlation(offline, complete) > 0.995
    assert rel_err(offline, complete) < rel_err(alike, complete)


def test_empty_stream_gives_zeros() -> None:
    recon = StreamingFBP(16, 8.0, n_slices=2)
    assert recon.n_projections == 0
    assert not recon.result().any()


# -- angular weights -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 180])
def test_uniform_half_turn_weights_like_iradon(n: int) -> None:
    angles = np.linspace(0.0, 180.0, n, endpoint=False)
    np.testing.assert_allclose(angular_weights(angles), math.pi / (2 * n))


@pytest.mark.parametrize("n", [7, 360])
def test_uniform_full_turn_weights_like_iradon(n: int) -> None:
    angles = np.linspace(0.0, 360.0, n, endpoint=False)
    np.testing.assert_allclose(angular_weights(angles), math.pi / (2 * n))


def test_duplicates_share_their_slot() -> None:
    angles = np.array([0.0, 45.0, 90.0, 135.0, 180.0, 90.0])  # 180 folds onto 0; 90 twice
    weights = angular_weights(angles)
    slot = math.pi / 8  # four slots over the half turn
    np.testing.assert_allclose(weights, [slot / 2, slot, slot / 2, slot, slot / 2, slot / 2])
    assert weights.sum() == pytest.approx(math.pi / 2)


def test_irregular_angles_get_their_interval() -> None:
    weights = angular_weights([0.0, 10.0, 30.0, 90.0])
    gaps = np.radians([10.0, 20.0, 60.0, 90.0])  # after each angle, wrapping at 180
    expected = 0.5 * (gaps + np.roll(gaps, 1)) / 2
    np.testing.assert_allclose(weights, expected)
    assert weights.sum() == pytest.approx(math.pi / 2)


def test_missing_wedge_is_not_given_to_its_edges() -> None:
    angles = np.arange(0.0, 120.0, 1.0)  # 60 degrees never measured
    weights = angular_weights(angles)
    np.testing.assert_allclose(weights, math.radians(1.0) / 2)
