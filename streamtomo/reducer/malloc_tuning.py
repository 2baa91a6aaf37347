"""Keep the reducer's message buffers' pages mapped between events (glibc's malloc).

Every worker result crosses the reducer as fresh buffers of megabytes: ZeroMQ's
receive buffer, the ``bytes`` dranspose receives it into, and the arrays ``pickle``
makes of it (4 MB each for a 1024^2 projection, 48 MB for a partial sum of five
slices and seven sweep centres). glibc serves such sizes with a new ``mmap`` each
and unmaps them on ``free`` (its adaptive threshold stops at 32 MiB and the heap top
is trimmed above twice the threshold), so every buffer's pages are faulted in and
zeroed by the kernel again, on every event: measured, hundreds to a thousand page
faults per event and more system than user CPU time in the reducer process (worse
on virtual machines, where a page fault costs more).

Here the reducer's malloc takes no ``mmap`` of its own (``M_MMAP_MAX`` 0: every
buffer comes from the heap, whose freed pages the next event reuses) and trims the
heap top only above 160 MiB: a partial sum's receive buffer and its unpickled arrays
(96 MB freed at once) must not be trimmed, or the next one faults them in again.
What stays mapped is bounded by what was alive at once (a few results: the
reducer's ZeroMQ queue holds a few messages) plus that margin. The large arrays (sinogram, volume) are not malloc's: they are ``mmap``-ed by
:class:`~streamtomo.pipeline.streaming.prefault.ArrayPool` and stay out of the heap.

Linux with glibc only; elsewhere (musl, macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 160 << 20

_libc: Any = None
_done: bool | None = None


def _glibc() -> Any:
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
                _libc = libc
            except (OSError, AttributeError):  # not glibc
                pass
    return _libc


def keep_buffer_pages() -> bool:
    """Set malloc's options once per process; True if glibc took them."""
    global _done
    if _done is None:
        libc = _glibc()
        _done = (
            bool(libc) and bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        )
        logger.debug("malloc options %s", "set" if _done else "not set")
    return _done
