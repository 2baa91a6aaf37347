"""Binning: the numba kernel gives numpy's block means, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from streamtomo.pipeline.numba_runtime import load_numba, numba_available
from streamtomo.pipeline.streaming import binning
from streamtomo.pipeline.streaming.binning import bin_frame


def numpy_binned(data: np.ndarray, factor: int) -> np.ndarray:
    rows, cols = (data.shape[0] // factor) * factor, (data.shape[1] // factor) * factor
    blocks = data[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor)
    total = blocks.sum(axis=(1, 3), dtype=np.int64)
    return ((total + factor * factor // 2) // (factor * factor)).astype(data.dtype)


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int16, np.int32])
@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("shape", [(37, 53), (512, 600)])  # edges dropped; 512 x 600 runs threaded
def test_kernel_equals_numpy(dtype: type, factor: int, shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    # threaded whatever this machine's thread count (one thread takes the serial variant)
    monkeypatch.setattr(load_numba().config, "NUMBA_NUM_THREADS", 2)
    info = np.iinfo(dtype)
    rng = np.random.default_rng(factor)
    data = rng.integers(max(info.min, -(1 << 20)), min(info.max, 1 << 20), shape, endpoint=True).astype(dtype)
    data[0, :4] = info.max  # the sum of a block of maxima must not overflow
    out = bin_frame(data, factor)
    assert out.dtype == data.dtype and out.shape == (shape[0] // factor, shape[1] // factor)
    np.testing.assert_array_equal(out, numpy_binned(data, factor))


def test_other_dtypes_take_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.arange(64, dtype=np.uint64).reshape(8, 8)
    np.testing.assert_array_equal(bin_frame(data, 2), numpy_binned(data, 2))
    monkeypatch.setattr(binning, "numba_available", lambda: False)
    small = np.arange(24, dtype=np.uint16).reshape(4, 6)
    np.testing.assert_array_equal(bin_frame(small, 2), numpy_binned(small, 2))
    floats = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(bin_frame(floats, 2), [[2.5, 4.5], [10.5, 12.5]])
