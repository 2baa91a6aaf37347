"""Zeroed arrays whose pages are mapped in the background, before frames need them.

A fresh anonymous array costs a page fault on the first write of each page: for a
gigabyte sinogram that is seconds on the frame path (seen on virtual machines), and
touching it all at once at scan start blocks the reducer's event loop so long that
dranspose's own Redis calls time out. Instead the array is returned at once and a
daemon thread asks the kernel to map its pages in 16 MiB steps
(``MADV_POPULATE_WRITE``, Linux 5.14+): that never changes the content, so frames
may be written meanwhile. The call goes through ctypes, which lets go of the
interpreter lock while the kernel works: ``mmap.madvise`` holds it for each 16 MiB
step (about 12 ms here), when no other thread of the reducer runs Python, its event
loop included (``py-spy --gil`` found the populating thread holding the lock in a
tenth of the samples of a 1024^2 scan). Measured while 1 GiB was populated, a Python
thread counting beside it: 4.9 million counts/s with ``mmap.madvise``, 8.8 with
ctypes. Where the kernel lacks the advice, pages fault in on first write as before.

Mapped memory is also recycled: once nothing refers to such an array any more, its
mapping waits (at most :data:`RECYCLE_BYTES` in all, :data:`RECYCLE_SECONDS` each) for
the next array of about its size, which gets it zeroed instead of fresh pages. Each
scan makes the same live sums and published stacks again (100 MB at 1024^2, 400 MB at
2048^2); mapping them afresh took about 0.19 s of the reducer's CPU per 1024^2 scan on a virtual machine
(py-spy, the populating threads), 0.6 ms per event of a 300-projection scan, where
zeroing mapped pages takes a tenth of that.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import functools
import logging
import mmap
import threading
import time
import weakref
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux value; Python < 3.13 lacks the name
STEP = 16 << 20
# Mappings of arrays no longer used, kept for the next arrays of about their size (the
# oldest go first beyond this). A reducer's live sums and published stacks of one scan
# are 100 MB at 1024^2 and 400 MB at 2048^2; the sinogram has its own pool (ArrayPool).
RECYCLE_BYTES = 1 << 30
# A mapping no array took within this long is unmapped: scans back to back reuse their
# memory; after a pause (or a scan of another size) it is not kept resident for nothing.
RECYCLE_SECONDS = 30.0
# A mapping serves arrays of its size down to this factor less (its tail stays resident).
RECYCLE_SLACK = 1.25


class _Recycler:
    """Unused mappings, oldest first, each kept :data:`RECYCLE_SECONDS` at most.

    An array dies in whichever thread drops the last reference to it, also inside
    Python's cycle collector, which any allocation may start, in a thread that holds
    this recycler's lock: :meth:`give` therefore only appends to a deque (no lock),
    and the other methods move what was given into the list under the lock. A daemon
    thread, started by the first :meth:`take`, unmaps expired mappings.
    """

    def __init__(self) -> None:
        self._given: collections.deque[tuple[float, mmap.mmap]] = collections.deque()
        self._free: list[tuple[float, mmap.mmap]] = []
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None

    @property
    def nbytes(self) -> int:
        with self._lock:
            self._settle()
            return sum(len(buffer) for _, buffer in self._free)

    def take(self, size: int) -> mmap.mmap | None:
        """The smallest kept mapping of ``size`` to ``size * RECYCLE_SLACK`` bytes, or None."""
        with self._lock:
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, name="recycled-mappings", daemon=True)
                self._sweeper.start()
            self._settle()
            fitting = [i for i, (_, b) in enumerate(self._free) if size <= len(b) <= size * RECYCLE_SLACK]
            if not fitting:
                return None
            best = min(fitting, key=lambda i: len(self._free[i][1]))
            return self._free.pop(best)[1]

    def give(self, buffer: mmap.mmap) -> None:
        if len(buffer) <= RECYCLE_BYTES:  # else unmapped when the last reference goes, as before
            self._given.append((time.monotonic(), buffer))

    def clear(self) -> None:
        with self._lock:
            self._given.clear()
            self._free.clear()

    def _settle(self) -> None:
        """Under the lock: take in what was given, drop what expired or overflows."""
        while self._given:
            self._free.append(self._given.popleft())
        now = time.monotonic()
        self._free = [(given, buffer) for given, buffer in self._free if now - given < RECYCLE_SECONDS]
        while sum(len(buffer) for _, buffer in self._free) > RECYCLE_BYTES:
            self._free.pop(0)

    def _sweep(self) -> None:
        while True:
            time.sleep(RECYCLE_SECONDS / 2)
            with self._lock:
                self._settle()


RECYCLED = _Recycler()


def prefaulted_zeros(shape: tuple[int, ...], dtype: npt.DTypeLike = np.float32) -> npt.NDArray[np.float32]:
    """Zeros of ``shape``: from a recycled mapping (zeroed here) where one of about
    the size is free, else on a fresh mapping whose pages a thread maps meanwhile.
    Small arrays are ``np.zeros``."""
    itemsize = np.dtype(dtype).itemsize
    count = int(np.prod(shape))
    size = count * itemsize
    if size < STEP or not hasattr(mmap, "MAP_ANONYMOUS"):
        return np.zeros(shape, dtype=dtype)
    buffer = RECYCLED.take(size)
    fresh = buffer is None
    if buffer is None:
        buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base: npt.NDArray[np.float32] = np.frombuffer(buffer, dtype=dtype, count=count)
    if fresh:
        threading.Thread(target=_populate, args=(buffer, size), name="prefault", daemon=True).start()
    else:
        base.fill(0)
    # Every view of the array refers to ``base``: once it goes, nothing reads or writes
    # the mapping and it may serve the next array (the callback holds the mapping only).
    weakref.finalize(base, RECYCLED.give, buffer).atexit = False
    return base.reshape(shape)


@functools.cache
def _libc_madvise() -> Callable[[int, int, int], int] | None:
    """libc's ``madvise(addr, length, advice)`` through ctypes (which releases the GIL), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return madvise


def _populate(buffer: mmap.mmap, size: int) -> None:
    """Map ``buffer``'s pages, 16 MiB at a time. The mapping stays alive meanwhile:
    this thread holds ``buffer``, and the view taken for its address keeps it from
    being closed."""
    madvise = _libc_madvise()
    try:
        if madvise is None:
            for offset in range(0, size, STEP):
                buffer.madvise(MADV_POPULATE_WRITE, offset, min(STEP, size - offset))
            return
        view = np.frombuffer(buffer, dtype=np.uint8)
        address = int(view.ctypes.data)
        for offset in range(0, size, STEP):
            if madvise(address + offset, min(STEP, size - offset), MADV_POPULATE_WRITE) != 0:
                raise OSError(ctypes.get_errno(), "madvise(MADV_POPULATE_WRITE) failed")
    except (OSError, ValueError) as error:  # an old kernel
        logger.debug("pages not mapped ahead: %s", error)


class ArrayPool:
    """Keeps each large array's memory for the next scan of the same (or smaller) size.

    Mapping fresh pages costs far more than zeroing mapped ones (measured here: 6 s
    against 0.08 s for a 1.2 GB sinogram on a virtual machine), and a beamline
    repeats scans of one geometry. The reducer keeps a pool in its dranspose context,
    which survives scans; a scan takes its arrays from it by name. An array taken
    again is zeroed (:meth:`zeros`) or left as it is (:meth:`reuse`), and the previous
    scan must be done with it: dranspose starts the next scan after the previous
    reducer's ``finish``, but the final file is written after ``finish``, from these
    arrays, and holds them (:meth:`hold`). A scan that asks for a held array waits up
    to ``hold_wait`` seconds for the release, then gets a fresh array instead (memory
    for both while the file is still being written).

    Back-to-back scans always ask while the previous file is written (a 1.3 GB
    sinogram takes seconds to write): without a wait each scan mapped a fresh
    sinogram (a second of system CPU at 1024^2 x 300, and twice the sinogram's memory
    at the peak). The wait is in the reducer's ``process_result`` (dranspose runs it
    in a thread: its event loop goes on); results queue in the bounded ZeroMQ queues
    meanwhile and the workers wait, as for any slow reducer.
    """

    def __init__(self, hold_wait: float = 0.0) -> None:
        self.hold_wait = hold_wait
        self._buffers: dict[str, npt.NDArray[np.float32]] = {}
        self._held: list[npt.NDArray[np.float32]] = []  # one entry per hold of a buffer
        # hold and release come from the final file's thread
        self._lock = threading.Condition(threading.Lock())

    def _is_held(self, buffer: npt.NDArray[np.float32]) -> bool:
        return any(buffer is b for b in self._held)

    def zeros(self, name: str, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
        """The array ``name`` of ``shape``, zeroed."""
        array, fresh = self.reuse(name, shape)
        if not fresh:
            array.fill(0.0)
        return array

    def reuse(self, name: str, shape: tuple[int, ...]) -> tuple[npt.NDArray[np.float32], bool]:
        """The array ``name`` of ``shape`` as it is, and whether it is fresh (zeros);
        otherwise it holds what the previous scan left (zeroing the sinogram at a
        scan's start was 0.13 s of the reducer's CPU at 1024^2 x 300, 2.5 GB a second:
        a caller that knows what it has written zeroes only the rest)."""
        size = int(np.prod(shape))
        with self._lock:
            buffer = self._buffers.get(name)
            if buffer is not None and buffer.size >= size and self._is_held(buffer) and self.hold_wait > 0:
                logger.info("the %s array is still being written to a final file: waiting for it", name)
                waited = buffer
                self._lock.wait_for(lambda: not self._is_held(waited), self.hold_wait)
            if buffer is not None and self._is_held(buffer):
                logger.info("the %s array is still being written to a final file: this scan gets a new one", name)
                buffer = None  # the holder keeps it alive until it is done; then it is freed
            if buffer is None or buffer.size < size:
                self._buffers.pop(name, None)  # free the smaller one first
                buffer = self._buffers[name] = prefaulted_zeros((size,))
                return buffer[:size].reshape(shape), True
        return buffer[:size].reshape(shape), False

    def hold(self) -> Callable[[], None]:
        """Keep the arrays handed out so far unchanged until the returned function is called."""
        with self._lock:
            held = list(self._buffers.values())
            self._held.extend(held)
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                for buffer in held:
                    # By identity: ``==`` on arrays compares their elements.
                    del self._held[next(i for i, b in enumerate(self._held) if b is buffer)]
                self._lock.notify_all()

        return release

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())
