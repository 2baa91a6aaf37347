"""When our kernels take their parallel variant."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


COMPILE_KERNELS = """
import numpy as np
from streamtomo.pipeline.reconstruction.backprojection import _numba_kernel, pixel_major_kernel
from streamtomo.pipeline.reconstruction.interleaved import _numba_unweave
one = np.ones(1)
pixel_major_kernel(True, 4)(np.zeros((8, 8, 4), np.float32), np.zeros((1, 10, 8), np.float32), one, one, one, one)
_numba_kernel(True)(np.zeros((3, 8, 8), np.float32), np.zeros((1, 3, 10), np.float32), 4.0, one, one, one)
_numba_unweave(True)(np.zeros((8, 8, 4), np.float32), np.zeros((3, 8, 8), np.float32), False)
"""


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
def test_kernels_whose_closures_hold_numba_functions_write_no_disk_cache(tmp_path: Path) -> None:
    # numba keys such a closure's cache entry by cells that pickle differently in every
    # process: the entry was never found again and every start wrote another.
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", COMPILE_KERNELS], env=env, check=True, timeout=300)
    written = [path.name for path in tmp_path.rglob("*") if path.is_file()]
    assert not [name for name in written if "pixel_major" in name or "backproject_kernel" in name]
    # The unweave kernel's closure holds only the numba module: cached once, found again.
    assert len([name for name in written if "unweave" in name and name.endswith(".nbc")]) == 1
