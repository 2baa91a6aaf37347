"""How our numba kernels run: which threading layer, and one parallel call at a time.

numba's OpenMP layer cost a fixed ~8 ms per parallel call here (5 slices of 256^2:
8.2 ms with omp, 0.47 ms with workqueue; 1024^2: 8.4 vs 6.8 ms), so we pick the
workqueue layer unless NUMBA_THREADING_LAYER says otherwise. The workqueue layer
must not be entered from two threads at once (the reducer's timer and the replay
thread both backproject), hence the lock around every parallel call.
"""

from __future__ import annotations

import os
import threading
from typing import Any

PARALLEL_LOCK = threading.Lock()


def load_numba() -> Any:
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]
    return numba
