"""How much of this process's memory is resident, and whether the kernel maps pages
ahead on request (``MADV_POPULATE_WRITE``, Linux 5.14+): for the tests of memory
mapped before frames need it."""

from __future__ import annotations

import mmap
import os

from streamtomo.pipeline.streaming import prefault


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def kernel_populates(size: int = 16 << 20) -> bool:
    """Whether populating a fresh mapping of ``size`` bytes makes most of it resident."""
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    before = resident_bytes()
    prefault._populate(buffer, size)
    populated = resident_bytes() - before >= size // 2
    buffer.close()
    return populated
