"""Keep the reducer's message buffers' pages mapped between events (glibc's malloc).

Every worker result crosses the reducer as fresh buffers of megabytes: ZeroMQ's
receive buffer, the ``bytes`` dranspose receives it into, and the arrays ``pickle``
makes of it (4 MB each for a 1024^2 projection). glibc serves such sizes with a new
``mmap`` and unmaps them on ``free`` until its adaptive threshold has grown past
them, and it trims the heap top above twice that threshold, so buffers' pages were
faulted in and zeroed by the kernel again and again: measured, hundreds of page
faults per event and more system than user CPU time in the reducer process (worse
on virtual machines, where a page fault costs more).

Here the threshold is fixed at 32 MiB (glibc's largest on 64 bits), so buffers up to
32 MiB come from the heap and reuse its pages. Larger ones (a 48 MB partial sum of
five slices and seven sweep centres, every few dozen projections) are still mapped
and unmapped each time. The large arrays (sinogram, volume) are not malloc's:
:class:`~streamtomo.pipeline.streaming.prefault.ArrayPool` maps them.

What the heaps keep beyond what is alive is memory beyond what the reducer
publishes, and glibc gives every thread that allocates a heap of its own (the event
loop, dranspose's executor threads, the servers' threads). So there are at most two
heaps: with no limit and a 160 MiB margin the reducer's peak was 1.60-1.70x the
arrays it publishes (1024^2, one worker), with two 1.52x.

The margin: the heap top is trimmed when more than 128 MiB of it is free, down to
64 MiB (``M_TOP_PAD``), which also keeps a second heap of the ZeroMQ thread's arena
from being unmapped whenever its last message is freed. With trimming at 64 MiB and
glibc's 128 KiB pad, the main heap grew and shrank by 72 MiB every few events and the
ZeroMQ thread's heaps were mapped and unmapped: ``strace`` showed both, and the
reducer took about 600 page faults per 1024^2 event; with this, only the partial
sums above 32 MiB are mapped (``strace``), and the reducer's CPU per event fell by
about a tenth at the same peak (1.35-1.38x).

Worker and ingester processes take the same settings (``streamtomo.app.services``):
frames and results cross them the same way (the detector's ingester at 2048^2, 8 MB
frames: 960 page faults and 6.2 ms of system CPU per frame before, 0.3 and 3.8 after).

Linux with glibc only; elsewhere (musl, macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENA_MAX = 2
MMAP_THRESHOLD = 32 << 20  # glibc refuses more than HEAP_MAX_SIZE / 2 (32 MiB on 64 bits)
TRIM_THRESHOLD = 128 << 20
TOP_PAD = 64 << 20

_done: bool | None = None


def keep_buffer_pages() -> bool:
    """Set malloc's thresholds once per process; True if glibc took them."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = (
        bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
        and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        and bool(mallopt(M_TOP_PAD, TOP_PAD))
        and bool(mallopt(M_ARENA_MAX, ARENA_MAX))
    )
    logger.debug("malloc thresholds %s", "set" if _done else "not set")
    return _done
