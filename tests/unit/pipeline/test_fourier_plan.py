"""The volume engine: batches, threads, angle-major input and the kept plan give the same slices."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from streamtomo.pipeline.reconstruction.backends import installed_backends
from streamtomo.pipeline.reconstruction.backends.fourier import fourier_fbp
from streamtomo.pipeline.reconstruction.backends.fourier_plan import (
    DEFAULT_UPSAMPLING,
    Geometry,
    pair_bytes,
    pairs_for,
    plan_for,
    release_plans,
)

pytestmark = pytest.mark.skipif("fourier" not in installed_backends(), reason="ducc0 is not installed here")

N, A = 48, 72
ANGLES = np.linspace(0.0, 180.0, A, endpoint=False)


def geometry(center: float = 23.4) -> Geometry:
    return Geometry.of(ANGLES, N, center, N)


def stack(k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((k, A, N), dtype=np.float32)


def test_batches_with_a_short_last_one_equal_one_slice_at_a_time() -> None:
    """7 slices with 2 pairs per batch on 3 threads: batches of 4, 3 (an odd pair), each slice as alone."""
    release_plans()
    rows = stack(7)
    plan = plan_for(geometry(), 7, threads=3, memory=5 * pair_bytes(A, N, N, DEFAULT_UPSAMPLING) // 2)
    assert plan.pairs == 2  # bounded by memory, not by the 3 threads
    out = np.full((7, N, N), np.nan, dtype=np.float32)  # every pixel must be written
    plan.reconstruct_into(rows.transpose(1, 0, 2), range(7), out)
    alone = np.stack([fourier_fbp(row, ANGLES, 23.4, nthreads=1) for row in rows])
    np.testing.assert_allclose(out, alone, atol=2e-5 * float(np.abs(alone).max()))


def test_reads_filled_slots_of_an_angle_major_sinogram_in_place() -> None:
    """The volume job's call: (A_all, R, C) storage, some slots never filled, rows 2..5."""
    release_plans()
    by_angle = np.random.default_rng(1).random((A + 8, 9, N), dtype=np.float32)
    slots = np.sort(np.random.default_rng(2).choice(A + 8, A, replace=False)).astype(np.intp)
    plan = plan_for(geometry(), 4, threads=2)
    out = np.empty((4, N, N), dtype=np.float32)
    plan.reconstruct_into(by_angle, range(2, 6), out, slots)
    expected = fourier_fbp(by_angle[slots][:, 2:6].transpose(1, 0, 2), ANGLES, 23.4)
    np.testing.assert_allclose(out, expected, atol=2e-5 * float(np.abs(expected).max()))


def test_the_plan_is_kept_for_the_same_geometry_and_replaced_for_another() -> None:
    release_plans()
    first = plan_for(geometry(), 8, threads=2)
    assert plan_for(geometry(), 2, threads=2) is first  # fewer slices: the bigger plan serves
    other = plan_for(geometry(center=20.0), 8, threads=2)
    assert other is not first
    assert plan_for(geometry(), 8, threads=2) is not first  # one plan kept: the old one was dropped


def test_one_pair_per_thread_within_the_memory_bound() -> None:
    g = geometry()
    assert pairs_for(100, g, threads=16) == 16
    assert pairs_for(5, g, threads=16) == 3
    assert pairs_for(100, g, threads=16, memory=1) == 1


def test_output_shape_is_checked() -> None:
    plan = plan_for(geometry(), 2, threads=1)
    with pytest.raises(ValueError, match=r"out has shape \(2, 48, 47\)"):
        plan.reconstruct_into(stack(2).transpose(1, 0, 2), range(2), np.empty((2, N, N - 1), np.float32))


def test_a_tolerance_single_precision_cannot_reach_is_refused_when_planned() -> None:
    """ducc0 would fail only at the first batch, with an error naming none of our parameters."""
    release_plans()
    with pytest.raises(ValueError, match=r"eps 1e-06 is below .*: raise eps or upsampling"):
        plan_for(Geometry.of(ANGLES, N, 23.4, N, eps=1e-6), 2, threads=1)
    row = stack(1)[0]
    exact = fourier_fbp(row, ANGLES, 23.4, eps=1e-5)  # just within reach: it runs
    np.testing.assert_allclose(exact, fourier_fbp(row, ANGLES, 23.4), atol=2e-3 * float(np.abs(exact).max()))


def test_upsampling_outside_what_ducc0_takes_is_refused() -> None:
    for bad in (1.2, 2.6):
        with pytest.raises(ValueError, match=rf"upsampling {bad} is outside \(1.2, 2.5\]"):
            Geometry.of(ANGLES, N, 23.4, N, upsampling=bad)


def test_a_ducc0_pool_smaller_than_the_threads_asked_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """OMP_NUM_THREADS=1 in a reducer's environment would otherwise slow its volume silently."""
    import ducc0

    release_plans()
    size = ducc0.misc.thread_pool_size()
    ducc0.misc.resize_thread_pool(1)
    try:
        with caplog.at_level(logging.WARNING, logger="streamtomo.pipeline.reconstruction.backends.fourier_plan"):
            plan_for(geometry(), 4, threads=2)
    finally:
        ducc0.misc.resize_thread_pool(size)
        release_plans()
    assert "runs on 1 of the 2 threads asked" in caplog.text
