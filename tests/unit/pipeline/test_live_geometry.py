"""The live geometry's arrays: the reducer's sums are mapped before sums arrive."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.messages import DetectorInfo
from streamtomo.pipeline.streaming import prefault
from streamtomo.pipeline.streaming.live_geometry import LiveSliceGeometry
from tests.support.resident_memory import resident_bytes_of, skip_unless_kernel_populates


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_POPULATE_WRITE is Linux's")
def test_the_reducers_sums_are_mapped_in_the_background_and_read_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel is asked directly (not through prefault._populate, which this test
    # checks): where it can populate, unmapped sums are a failure, never a skip.
    skip_unless_kernel_populates()
    monkeypatch.setattr(prefault, "RECYCLED", prefault._Recycler())  # fresh mappings: a recycled one is resident
    config = PipelineConfig.from_mapping({"n_darks_before": 1, "n_flats_before": 1, "n_projections": 400})
    geometry = LiveSliceGeometry(config, DetectorInfo(16, 1024, "uint16"))
    stacks = [geometry.new_stack(), geometry.new_sweep_stack()]  # 20 MB and 28 MB at 1024^2
    expected = sum(stack.nbytes for stack in stacks)

    def resident() -> int:  # of the stacks' own pages (the process's total moves with other threads)
        return sum(resident_bytes_of(stack) for stack in stacks)

    deadline = time.monotonic() + 20.0
    while resident() < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    # np.zeros pages are mapped only as the first partial sum is added (350 ms of system
    # CPU at 2048^2 on the reducer's frame path).
    assert resident() >= expected
    assert all(stack.dtype == np.float32 and not stack.any() for stack in stacks)
    assert [stack.shape for stack in stacks] == [
        (len(geometry.slice_rows), geometry.size, geometry.size),
        (len(geometry.sweep_centers), geometry.size, geometry.size),
    ]


@pytest.mark.parametrize(
    ("rows", "cols", "settings"),
    [
        (32, 256, {}),
        (64, 301, {"filter": "hann", "cor_sweep_steps": 5, "cor_sweep_step": 0.5}),
        (16, 128, {"cor_sweep_steps": 0}),
        (40, 1000, {"center": "480.3", "filter": "shepp-logan"}),
    ],
    ids=["32x256", "odd width, hann, 5 candidates", "no sweep", "off-centre axis"],
)
def test_a_workers_rows_are_the_reducers_filtered_rows_bit_for_bit(
    rows: int, cols: int, settings: dict[str, object]
) -> None:
    # A worker filters a projection's slice rows and sweep row in one transform each
    # way; the reducer (lost or stale frames) filters them apart, with ``add`` and
    # ``add_sweep``. The sums of both must be the same, not only close.
    geometry = LiveSliceGeometry(PipelineConfig.from_mapping(settings), DetectorInfo(rows, cols, "uint16"))
    rng = np.random.default_rng(7)
    for _ in range(10):
        values = (3 * rng.standard_normal((len(geometry.sinogram_rows), cols))).astype(np.float32)
        apart = geometry.filter.apply(values[geometry.slice_positions])
        if geometry.sweep_rows is not None:
            apart = np.concatenate([apart, geometry.sweep_rows.filtered_rows(values[geometry.sweep_position])])
        together = geometry.filtered_rows(values)
        assert together.dtype == np.float32 and together.flags.c_contiguous
        assert np.array_equal(together, apart)
