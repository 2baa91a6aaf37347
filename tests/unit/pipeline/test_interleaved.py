"""The pixel-major slice stack sums exactly what the planar kernel sums."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from streamtomo.pipeline.numba_runtime import load_numba, numba_available
from streamtomo.pipeline.reconstruction import interleaved
from streamtomo.pipeline.reconstruction.backprojection import backproject_into, pixel_major_kernel
from streamtomo.pipeline.reconstruction.interleaved import (
    BATCH_PROJECTIONS,
    LANES,
    MIN_INTERLEAVED_SLICES,
    InterleavedSlices,
    interval_table,
    lanes_for,
)

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba is not installed")

# Both detector ends, the axis at 90 degrees (cos is 6e-17, not 0), full turn, negative.
ANGLES = [0.0, 37.3, 90.0, 180.0, 271.1, -45.0, 359.9]
WEIGHTS = [0.7, 1.0, -1.0, 0.3, 2.0, 1.0, 0.5]


def planar_and_interleaved(
    n_slices: int, size: int, n_cols: int, center: float, backend: str, threaded: bool | None = None
) -> tuple[npt.NDArray[np.float32], InterleavedSlices]:
    rng = np.random.default_rng(n_slices * 1000 + size)
    rows = [rng.standard_normal((n_slices, n_cols)).astype(np.float32) for _ in ANGLES]
    planar = np.zeros((n_slices, size, size), dtype=np.float32)
    stack = InterleavedSlices(n_slices, size, backend=backend)  # type: ignore[arg-type]
    if threaded is not None:  # the parallel variant, whatever this machine's thread count
        stack.threaded = threaded
    for r, angle, weight in zip(rows, ANGLES, WEIGHTS, strict=True):
        backproject_into(planar, r, angle, center, weight, backend=backend)  # type: ignore[arg-type]
        stack.add(r, angle, center, weight)
    return planar, stack


# Only stacks that are kept pixel-major: with numpy, or fewer than
# MIN_INTERLEAVED_SLICES slices, the stack hands its rows to the planar kernel itself,
# and comparing that with the planar kernel would compare it with itself (those stacks
# are checked against the exact sum below).
@needs_numba
# Lanes of 4 (3 slices), one group of 8 (5, 8), 8 and 4 (9, 12), two groups of 8 (13).
@pytest.mark.parametrize("n_slices", [3, 5, 8, 9, 12, 13])
@pytest.mark.parametrize(("size", "n_cols", "center"), [(64, 64, 32.0), (37, 50, 24.75), (96, 64, 30.5)])
def test_sums_equal_the_planar_kernel_bit_for_bit(n_slices: int, size: int, n_cols: int, center: float) -> None:
    planar, stack = planar_and_interleaved(n_slices, size, n_cols, center, "numba")
    assert stack.interleaved  # else the planar kernel is compared with itself
    assert planar.any()
    np.testing.assert_array_equal(stack.slices(), planar)


def exact_sums(rows: npt.NDArray[np.float64], size: int, center: float) -> npt.NDArray[np.float64]:
    """The (K, size, size) sum over ANGLES and WEIGHTS of the backprojections of K rows
    that are linear in the column, ``rows[k, c] = a_k + b_k * c``: linear interpolation
    reproduces them exactly, so pixel (i, j) gets ``a_k + b_k * u`` with the detector
    position u = center - sin * (i - size // 2) + cos * (j - size // 2). Worked out here
    in float64, independently of either kernel; the caller keeps every pixel on the
    detector (no edge to model)."""
    intercepts, slopes = rows[:, 0], rows[:, 1] - rows[:, 0]
    offsets = np.arange(size, dtype=np.float64) - size // 2
    total = np.zeros((rows.shape[0], size, size))
    for angle, weight in zip(ANGLES, WEIGHTS, strict=True):
        theta = math.radians(angle)
        u = center - math.sin(theta) * offsets[:, None] + math.cos(theta) * offsets[None, :]
        assert u.min() >= 0.0 and u.max() <= rows.shape[1] - 1  # on the detector
        total += weight * (intercepts[:, None, None] + slopes[:, None, None] * u)
    return total


@pytest.mark.parametrize(
    ("backend", "n_slices", "interleaves"),
    [
        ("numpy", 1, False),
        ("numpy", 2, False),
        ("numpy", 5, False),  # numpy never interleaves
        pytest.param("numba", 1, False, marks=needs_numba),
        pytest.param("numba", 2, False, marks=needs_numba),
        pytest.param("numba", 3, True, marks=needs_numba),
        pytest.param("numba", 9, True, marks=needs_numba),
    ],
)
def test_sums_equal_the_exact_backprojection(backend: str, n_slices: int, interleaves: bool) -> None:
    # 37^2 pixels around column 31.25 of 64: the diagonal (51 columns) stays on the
    # detector at every angle. Every row has a non-zero slope, so a shifted axis, a
    # swapped sine or a lost weight changes the sums.
    size, n_cols, center = 37, 64, 31.25
    k = np.arange(n_slices, dtype=np.float64)[:, None]
    rows = (1.0 + 0.5 * k) + (0.25 - 0.375 * k) * np.arange(n_cols, dtype=np.float64)  # exact in float32
    stack = InterleavedSlices(n_slices, size, backend=backend)  # type: ignore[arg-type]
    assert stack.interleaved == interleaves
    for angle, weight in zip(ANGLES, WEIGHTS, strict=True):
        stack.add(rows.astype(np.float32), angle, center, weight)
    expected = exact_sums(rows, size, center)
    tolerance = 1e-6 * float(np.abs(expected).max())  # float32 rounding of 7 terms
    np.testing.assert_allclose(stack.slices(), expected, rtol=0.0, atol=tolerance)
    np.testing.assert_allclose(stack.take(), expected, rtol=0.0, atol=tolerance)
    assert not stack.slices().any()


@needs_numba
@pytest.mark.parametrize("n_slices", [5, 12])
def test_the_threaded_kernel_sums_the_same(n_slices: int) -> None:
    size = 512  # from 512^2 pixels on, rows of pixels are shared among threads
    planar, stack = planar_and_interleaved(n_slices, size, 300, 151.3, "numba", threaded=True)
    assert stack.threaded
    np.testing.assert_array_equal(stack.slices(), planar)
    np.testing.assert_array_equal(stack.take(), planar)
    assert not stack.slices().any()


@needs_numba
def test_three_or_more_slices_are_kept_pixel_major_in_whole_lanes() -> None:
    assert not InterleavedSlices(MIN_INTERLEAVED_SLICES - 1, 16).interleaved
    stack = InterleavedSlices(9, 16)
    assert stack.interleaved and stack.lanes == lanes_for(9) == 3 * LANES == 12
    assert stack.nbytes == 16 * 16 * 12 * 4
    assert not InterleavedSlices(9, 16, backend="numpy").interleaved


@pytest.mark.parametrize("backend", [pytest.param("numba", marks=needs_numba), "numpy"])
def test_take_hands_out_the_sum_and_starts_from_zero(backend: str) -> None:
    planar, stack = planar_and_interleaved(5, 40, 48, 23.5, backend)
    taken = stack.take()
    np.testing.assert_array_equal(taken, planar)
    assert taken.shape == (5, 40, 40) and taken.flags.c_contiguous
    assert not stack.slices().any()
    rows = np.ones((5, 48), dtype=np.float32)
    stack.add(rows, 10.0, 23.5)
    again = np.zeros((5, 40, 40), dtype=np.float32)
    backproject_into(again, rows, 10.0, 23.5, backend=backend)  # type: ignore[arg-type]
    np.testing.assert_array_equal(stack.take(), again)
    np.testing.assert_array_equal(taken, planar)  # what was handed out is not reused


@needs_numba
@pytest.mark.parametrize("count", range(1, 2 * BATCH_PROJECTIONS + 2))
def test_projections_of_an_unfinished_batch_are_in_the_sum_read(count: int) -> None:
    rng = np.random.default_rng(count)
    stack = InterleavedSlices(5, 24)
    planar = np.zeros((5, 24, 24), dtype=np.float32)
    for k in range(count):
        rows = rng.standard_normal((5, 30)).astype(np.float32)
        stack.add(rows, 17.0 * k, 14.5, 0.5 + k)
        backproject_into(planar, rows, 17.0 * k, 14.5, 0.5 + k)
    assert stack.pending == count % BATCH_PROJECTIONS
    np.testing.assert_array_equal(stack.slices(), planar)
    assert stack.pending == 0
    np.testing.assert_array_equal(stack.take(), planar)
    assert not stack.slices().any()


@needs_numba
def test_a_batch_whose_kernel_raised_stays_pending_and_is_added_next_time(monkeypatch: pytest.MonkeyPatch) -> None:
    real = interleaved.pixel_major_kernel
    calls: list[int] = []

    def failing_once(threaded: bool, lanes: int) -> object:
        kernel = real(threaded, lanes)

        def run(*args: object) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("the kernel failed")
            kernel(*args)

        return run

    monkeypatch.setattr(interleaved, "pixel_major_kernel", failing_once)
    rng = np.random.default_rng(3)
    stack = InterleavedSlices(5, 24)
    planar = np.zeros((5, 24, 24), dtype=np.float32)
    for k in range(BATCH_PROJECTIONS + 1):
        rows = rng.standard_normal((5, 30)).astype(np.float32)
        backproject_into(planar, rows, 31.0 * k, 12.0)
        if k == BATCH_PROJECTIONS - 1:
            with pytest.raises(RuntimeError, match="kernel failed"):
                stack.add(rows, 31.0 * k, 12.0)
            assert stack.pending == BATCH_PROJECTIONS  # nothing lost
        else:
            stack.add(rows, 31.0 * k, 12.0)
    assert stack.pending == 1
    np.testing.assert_array_equal(stack.slices(), planar)


@needs_numba
def test_clear_forgets_the_projections_not_yet_added() -> None:
    stack = InterleavedSlices(5, 24)
    for k in range(BATCH_PROJECTIONS + 2):
        stack.add(np.ones((5, 30), np.float32), 10.0 * k, 14.5)
    assert stack.pending
    stack.clear()
    assert stack.pending == 0 and not stack.slices().any()


@needs_numba
def test_a_projection_of_another_detector_width_ends_the_batch_before_it() -> None:
    rng = np.random.default_rng(7)
    stack = InterleavedSlices(5, 24)
    planar = np.zeros((5, 24, 24), dtype=np.float32)
    for k, n_cols in enumerate([30, 30, 26, 26, 30]):
        rows = rng.standard_normal((5, n_cols)).astype(np.float32)
        stack.add(rows, 23.0 * k, 12.25)
        backproject_into(planar, rows, 23.0 * k, 12.25)
    np.testing.assert_array_equal(stack.slices(), planar)


@needs_numba
def test_the_kernel_refuses_shapes_its_unchecked_indices_would_leave() -> None:
    kernel = pixel_major_kernel(False, 4)
    one = np.ones(1)
    with pytest.raises(ValueError, match="multiple of 4"):
        pixel_major_kernel(False, 6)
    with pytest.raises(ValueError, match="this kernel's lanes"):  # out of another width
        kernel(np.zeros((8, 8, 8), np.float32), np.zeros((1, 10, 16), np.float32), one, one, one, one)
    with pytest.raises(ValueError, match="this kernel's lanes"):  # tables of another width
        kernel(np.zeros((8, 8, 4), np.float32), np.zeros((1, 10, 4), np.float32), one, one, one, one)
    with pytest.raises(ValueError, match="this kernel's lanes"):  # not square
        kernel(np.zeros((8, 6, 4), np.float32), np.zeros((1, 10, 8), np.float32), one, one, one, one)
    with pytest.raises(ValueError, match="2 detector columns"):
        kernel(np.zeros((8, 8, 4), np.float32), np.zeros((1, 1, 8), np.float32), one, one, one, one)
    with pytest.raises(ValueError, match="every projection"):
        kernel(np.zeros((8, 8, 4), np.float32), np.zeros((2, 10, 8), np.float32), one, one, one, one)


@needs_numba
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("lanes", [4, 8, 12, 16, 20])
def test_each_lane_count_gets_the_planar_sums(lanes: int, parallel: bool) -> None:
    # The kernel is compiled per lane count (groups of 8 and a last group of 4 unrolled):
    # every lane of every width gets exactly its slice's planar sum.
    rng = np.random.default_rng(lanes)
    n, n_cols, batch = 20, 26, 3
    rows = rng.standard_normal((batch, lanes, n_cols)).astype(np.float32)
    angles = [17.0, 95.0, 260.0]
    tables = np.stack([interval_table(r, lanes) for r in rows])
    out = np.zeros((n, n, lanes), np.float32)
    geometry = [
        np.array(g, dtype=np.float64)
        for g in zip(
            *[(12.3, math.cos(math.radians(a)), math.sin(math.radians(a)), 0.5 + k) for k, a in enumerate(angles)],
            strict=True,
        )
    ]
    pixel_major_kernel(parallel, lanes)(out, tables, *geometry)
    planar = np.zeros((lanes, n, n), np.float32)
    for k, a in enumerate(angles):
        backproject_into(planar, rows[k], a, 12.3, 0.5 + k)
    np.testing.assert_array_equal(np.moveaxis(out, 2, 0), planar)


def test_interval_table_holds_values_then_slopes() -> None:
    rows = np.arange(10, dtype=np.float32).reshape(2, 5) ** 2
    table = interval_table(rows, 8)
    assert table.shape == (5, 16)
    np.testing.assert_array_equal(table[:, :2], rows.T)
    np.testing.assert_array_equal(table[:4, 8:10], np.diff(rows, axis=1).T)
    assert not table[4, 8:].any() and not table[:, 2:8].any() and not table[:, 10:].any()
    reused = np.full((5, 16), np.nan, dtype=np.float32)  # a batch's table, written again
    assert interval_table(rows, 8, out=reused) is reused
    np.testing.assert_array_equal(reused, table)


def test_bad_rows_are_refused() -> None:
    stack = InterleavedSlices(5, 16)
    with pytest.raises(ValueError, match="filtered_rows"):
        stack.add(np.zeros((4, 16), np.float32), 0.0, 8.0)
    with pytest.raises(ValueError, match="2 detector columns"):
        stack.add(np.zeros((5, 1), np.float32), 0.0, 0.0)
    with pytest.raises(ValueError, match="at least one slice"):
        InterleavedSlices(0, 16)


@needs_numba
def test_vectorizer_switch_does_not_outlive_the_compilation() -> None:
    numba = load_numba()
    before = numba.config.SLP_VECTORIZE
    stack = InterleavedSlices(5, 64)
    stack.add(np.ones((5, 64), np.float32), 12.0, 32.0)
    assert stack.slices().any()  # the kernel ran (a projection alone waits for its batch)
    assert before == numba.config.SLP_VECTORIZE
