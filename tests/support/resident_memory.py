"""How much of an array's memory is resident, and whether the kernel maps pages
ahead on request (``MADV_POPULATE_WRITE``, Linux 5.14+): for the tests of memory
mapped before frames need it."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os

import numpy as np
import pytest

# Linux's value (include/uapi/asm-generic/mman-common.h); Python < 3.13 lacks the name.
# Spelled out here rather than taken from streamtomo's prefault: the probe must not
# share a mistake with the code it decides about.
MADV_POPULATE_WRITE = 23


def resident_bytes_of(array: np.ndarray) -> int:
    """Bytes of the pages under ``array`` that are resident (``mincore``): the array's own
    pages, whatever else the process maps or unmaps meanwhile. The process's total moved
    with other threads' work (a recycler's sweeper unmapping an earlier test's memory),
    and a test of one array's mapping failed now and then on a busy machine."""
    page = mmap.PAGESIZE
    start = array.ctypes.data // page * page
    length = array.ctypes.data + array.nbytes - start
    pages = (ctypes.c_ubyte * ((length + page - 1) // page))()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    if libc.mincore(start, length, pages) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return sum(flag & 1 for flag in pages) * page


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
