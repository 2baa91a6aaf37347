"""The reducer's array pool: memory reused across scans, never while a final file is written from it."""

from __future__ import annotations

import mmap
import sys
import threading
import time

import numpy as np
import pytest

from streamtomo.pipeline.streaming import prefault
from streamtomo.pipeline.streaming.prefault import ArrayPool
from tests.support.resident_memory import resident_bytes_of, skip_unless_kernel_populates


def test_the_next_scan_reuses_the_memory_zeroed() -> None:
    pool = ArrayPool()
    first = pool.zeros("sinogram", (4, 5))
    first += 1.0
    again = pool.zeros("sinogram", (4, 5))
    assert np.shares_memory(first, again) and not np.any(again)


def test_reuse_hands_the_memory_over_as_it_is_and_says_whether_it_is_fresh() -> None:
    pool = ArrayPool()
    first, fresh = pool.reuse("sinogram", (4, 5))
    assert fresh and not np.any(first)
    first += 1.0
    again, fresh = pool.reuse("sinogram", (2, 5))  # smaller fits in the same memory
    assert not fresh and np.shares_memory(first, again) and np.all(again == 1.0)
    bigger, fresh = pool.reuse("sinogram", (5, 5))
    assert fresh and not np.any(bigger)


def test_a_held_array_is_not_reused_until_released() -> None:
    pool = ArrayPool()
    sinogram = pool.zeros("sinogram", (4, 5))
    sinogram += 1.0
    release = pool.hold()  # the previous scan's final file is being written from it
    during = pool.zeros("sinogram", (4, 5))
    assert not np.shares_memory(sinogram, during) and not np.any(during)
    assert np.all(sinogram == 1.0)  # the file still sees the scan as it ended
    release()
    release()  # twice is harmless
    # The new array is the pool's now; the held one was the holder's alone.
    assert np.shares_memory(during, pool.zeros("sinogram", (4, 5)))


def test_a_hold_covers_the_arrays_handed_out_before_it() -> None:
    pool = ArrayPool()
    release = pool.hold()
    sinogram = pool.zeros("sinogram", (3,))  # after the hold: the pool's to reuse
    assert np.shares_memory(sinogram, pool.zeros("sinogram", (3,)))
    release()


def test_a_held_array_is_waited_for_when_the_pool_may_wait() -> None:
    pool = ArrayPool(hold_wait=30.0)
    sinogram = pool.zeros("sinogram", (4, 5))
    sinogram += 1.0
    release = pool.hold()
    threading.Timer(0.1, release).start()  # the final file is written
    again = pool.zeros("sinogram", (4, 5))  # waits for it, then reuses the memory
    assert np.shares_memory(sinogram, again) and not np.any(again)


def test_a_held_array_not_released_in_time_is_replaced() -> None:
    pool = ArrayPool(hold_wait=0.05)
    sinogram = pool.zeros("sinogram", (4, 5))
    release = pool.hold()
    during = pool.zeros("sinogram", (4, 5))
    assert not np.shares_memory(sinogram, during)
    release()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_POPULATE_WRITE is Linux's")
def test_populating_maps_every_page_and_leaves_the_content() -> None:
    # Whether the kernel can populate is asked of the kernel, not read from what
    # _populate did: a _populate that maps nothing must fail here, not skip.
    skip_unless_kernel_populates()
    size = 64 << 20
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    array = np.frombuffer(buffer, dtype=np.float32)
    array[:4] = 7.0  # written before: kept
    prefault._populate(buffer, size)
    resident = resident_bytes_of(array)  # its own pages: the process's total moves with other threads
    assert resident == size, f"{resident} of {size} bytes are resident"
    assert np.all(array[:4] == 7.0) and not np.any(array[4:])


STACK = (5, 1024, 1024)  # 20 MiB of float32: above the 16 MiB where mapping starts


@pytest.fixture
def recycler(monkeypatch: pytest.MonkeyPatch) -> prefault._Recycler:
    # A recycler of the test's own: arrays of earlier tests that die meanwhile (the
    # cycle collector may free them at any allocation) go to the one they came from.
    fresh = prefault._Recycler()
    monkeypatch.setattr(prefault, "RECYCLED", fresh)
    return fresh


def test_a_dropped_arrays_mapping_serves_the_next_array_of_its_size_zeroed(recycler: prefault._Recycler) -> None:
    first = prefault.prefaulted_zeros(STACK)
    first.fill(3.0)
    address = first.ctypes.data
    del first  # the last reference: its mapping waits for the next array
    assert recycler.nbytes == 4 * int(np.prod(STACK))
    again = prefault.prefaulted_zeros(STACK)
    assert again.ctypes.data == address and again.shape == STACK and not again.any()
    assert recycler.nbytes == 0


def test_a_mapping_still_viewed_is_not_handed_out(recycler: prefault._Recycler) -> None:
    first = prefault.prefaulted_zeros(STACK)
    first.fill(3.0)
    one_image = first[2]  # e.g. a published image a reader still holds
    del first
    assert recycler.nbytes == 0
    other = prefault.prefaulted_zeros(STACK)
    assert not np.shares_memory(other, one_image) and not other.any()
    assert np.all(one_image == 3.0)


def test_a_much_larger_mapping_waits_for_an_array_of_its_size(recycler: prefault._Recycler) -> None:
    large = prefault.prefaulted_zeros((12, 1024, 1024))  # 48 MiB: more than 1.25 x 20 MiB
    del large
    small = prefault.prefaulted_zeros(STACK)
    assert recycler.nbytes == 48 << 20  # kept, not spent on a much smaller array
    del small
    close = prefault.prefaulted_zeros((10, 1024, 1024))  # 40 MiB: the 48 MiB mapping serves it
    assert recycler.nbytes == 20 << 20 and close.shape == (10, 1024, 1024) and not close.any()


def test_the_mappings_kept_are_bounded_in_bytes(recycler: prefault._Recycler, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefault, "RECYCLE_BYTES", 45 << 20)
    arrays = [prefault.prefaulted_zeros(STACK) for _ in range(3)]
    del arrays  # 60 MiB dropped: the oldest goes beyond 45 MiB
    assert recycler.nbytes == 40 << 20
    huge = prefault.prefaulted_zeros((12, 1024, 1024))  # 48 MiB alone is more than the bound
    del huge
    assert recycler.nbytes == 40 << 20


def test_a_mapping_no_array_takes_in_time_is_unmapped(
    recycler: prefault._Recycler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefault, "RECYCLE_SECONDS", 1.0)  # the first check comes well within it
    first = prefault.prefaulted_zeros(STACK)
    del first
    assert recycler.nbytes == 20 << 20
    time.sleep(1.1)
    assert recycler.nbytes == 0  # not resident for nothing after a pause between scans
    again = prefault.prefaulted_zeros(STACK)
    assert again.shape == STACK and not again.any()


def test_a_mapping_given_while_the_recycler_is_locked_does_not_deadlock(recycler: prefault._Recycler) -> None:
    # An array freed by the cycle collector while this thread is inside take() (any
    # allocation there may start a collection) comes back through give() in the same
    # thread: give must not wait for the lock.
    buffer = mmap.mmap(-1, 20 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def give_under_the_lock() -> None:
        with recycler._lock:
            recycler.give(buffer)

    thread = threading.Thread(target=give_under_the_lock, daemon=True)
    thread.start()
    thread.join(10.0)
    assert not thread.is_alive()
    assert recycler.take(20 << 20) is buffer
