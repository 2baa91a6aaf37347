"""Sinogram assembly in memory reused across scans: only what a scan filled is its own."""

from __future__ import annotations

import numpy as np

from streamtomo.pipeline.streaming.prefault import ArrayPool
from streamtomo.pipeline.streaming.sinogram import AngleGrid, SinogramAssembler

GRID = AngleGrid(0.0, 180.0, 6)


def rows(value: float) -> np.ndarray:
    return np.full((2, 3), value, dtype=np.float32)


def test_reused_memory_reads_as_zeros_where_no_projection_came_until_zeroed() -> None:
    pool = ArrayPool()
    first = SinogramAssembler(2, GRID, 3, pool)
    assert first.unfilled_slots() is None  # fresh memory: zeros already
    for slot in range(GRID.n):
        first.place(slot, 30.0 * slot, rows(slot + 1))

    second = SinogramAssembler(2, GRID, 3, pool)
    assert np.shares_memory(first.by_angle, second.by_angle)
    second.place(2, 60.0, rows(-1.0))
    unfilled = second.unfilled_slots()
    assert unfilled is not None and unfilled.tolist() == [True, True, False, True, True, True]
    assert np.all(second.by_angle[0] == 1.0)  # not cleared when the scan started
    second.zero_unfilled()
    assert second.unfilled_slots() is None
    expected = np.zeros_like(second.by_angle)
    expected[2] = -1.0
    np.testing.assert_array_equal(second.by_angle, expected)


def test_without_a_pool_the_sinogram_is_zeros_from_the_start() -> None:
    sinogram = SinogramAssembler(2, GRID, 3)
    assert sinogram.unfilled_slots() is None and not np.any(sinogram.by_angle)


def test_angles_half_a_step_off_the_grid_each_take_their_own_slot() -> None:
    """A PandA's mid-exposure mean on a grid of exposure starts: every angle half a step
    past its slot. round() sent half steps to the even slot, so two projections shared
    every second slot (averaged, two steps apart) and the others stayed empty."""
    grid = AngleGrid(0.0, 180.0, 45)  # 4-degree steps
    slots = [grid.slot(4.0 * i + 2.0) for i in range(45)]
    assert slots == list(range(45))
    assert grid.slot(-2.0 + 1e-9) == 0 and grid.slot(1.9) == 0 and grid.slot(2.1) == 1  # not ties: nearest
