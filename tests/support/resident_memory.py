"""How much of this process's memory is resident, and whether the kernel maps pages
ahead on request (``MADV_POPULATE_WRITE``, Linux 5.14+): for the tests of memory
mapped before frames need it."""

from __future__ import annotations

import errno
import mmap
import os

import pytest

# Linux's value (include/uapi/asm-generic/mman-common.h); Python < 3.13 lacks the name.
# Spelled out here rather than taken from streamtomo's prefault: the probe must not
# share a mistake with the code it decides about.
MADV_POPULATE_WRITE = 23


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def kernel_supports_populate_write() -> bool:
    """Whether this kernel accepts ``MADV_POPULATE_WRITE``, asked of the kernel itself
    on a scratch mapping (not through streamtomo's ``prefault._populate``, which a test
    checks: a populate that does nothing must fail that test, not look like an old
    kernel and skip it). A kernel that does not know the advice answers EINVAL; any
    other error is not "unsupported" and is raised."""
    if not hasattr(mmap.mmap, "madvise"):  # not Linux (or a Python without madvise)
        return False
    size = mmap.PAGESIZE
    scratch = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        scratch.madvise(MADV_POPULATE_WRITE, 0, size)
    except OSError as error:
        if error.errno == errno.EINVAL:
            return False
        raise
    finally:
        scratch.close()
    return True


def skip_unless_kernel_populates() -> None:
    """Skip the calling test where the kernel lacks ``MADV_POPULATE_WRITE`` (Linux < 5.14)
    only: where it has it, the test must see the pages populated."""
    if not kernel_supports_populate_write():
        pytest.skip(f"madvise(MADV_POPULATE_WRITE={MADV_POPULATE_WRITE}) is refused: Linux older than 5.14")
