"""When our kernels take their parallel variant."""

from __future__ import annotations

import pytest

from streamtomo.pipeline.numba_runtime import PARALLEL_MIN_ELEMENTS, load_numba, numba_available, parallel_pays

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba is not installed")


@needs_numba
def test_threads_are_used_for_enough_work_and_more_than_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_numba().config
    monkeypatch.setattr(config, "NUMBA_NUM_THREADS", 4)
    assert parallel_pays(PARALLEL_MIN_ELEMENTS)
    assert not parallel_pays(PARALLEL_MIN_ELEMENTS - 1)
    # A worker of a full node runs with NUMBA_NUM_THREADS=1: the serial variant.
    monkeypatch.setattr(config, "NUMBA_NUM_THREADS", 1)
    assert not parallel_pays(PARALLEL_MIN_ELEMENTS * 64)
