"""Swapping a dataset's array keeps its chunks valid HDF5 (never larger than the shape)."""

from __future__ import annotations

import numpy as np
import pytest

from streamtomo.hsds_bridge.domain import Domain


def test_an_array_of_another_shape_gets_chunks_that_fit_it_and_every_chunk_dirty() -> None:
    domain = Domain("/d.h5")
    ds = domain.create_dataset("/vol", np.zeros((4, 16, 16), np.float32), chunks=(1, 16, 16))
    ds.take_dirty()
    ds.unwritten = np.ones((4, 1, 1), bool)  # described the old memory

    ds.array = np.ones((2, 8, 8), np.float32)

    assert ds.shape == (2, 8, 8)
    assert ds.chunks == (1, 8, 8)  # a whole-image chunk stays one image
    assert ds.take_dirty() == {(0, 0, 0), (1, 0, 0)}
    assert ds.unwritten is None


def test_chunks_are_clamped_to_a_smaller_shape_and_kept_for_a_larger_one() -> None:
    ds = Domain("/d.h5").create_dataset("/s", np.zeros((12, 16, 24), np.float32), chunks=(4, 8, 24))
    ds.array = np.zeros((30, 50, 40), np.float32)
    assert ds.chunks == (4, 8, 40)  # the last axis was chunked whole: it stays whole
    ds.array = np.zeros((3, 5, 10), np.float32)
    assert ds.chunks == (3, 5, 10)
    ds.array = np.zeros((0, 50, 40), np.float32)
    assert all(c >= 1 for c in ds.chunks)


def test_an_array_of_another_rank_needs_its_own_chunks() -> None:
    ds = Domain("/d.h5").create_dataset("/s", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="needs its own chunks"):
        ds.array = np.zeros((4, 4, 4), np.float32)
    ds.replace_array(np.zeros((4, 4, 4), np.float32), chunks=(1, 4, 4))
    assert ds.chunks == (1, 4, 4) and ds.chunk_grid() == (4, 1, 1)
    with pytest.raises(ValueError, match="do not match"):
        ds.replace_array(np.zeros((4, 4), np.float32), chunks=(1, 4, 4))
