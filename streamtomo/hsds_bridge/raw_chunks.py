"""Write whole chunks' bytes at their places in an HDF5 file, past the page cache.

The final file of a scan is gigabytes of chunks nobody reads back soon. Written
through the page cache (``H5Dwrite_chunk``), the kernel copied every byte once more
and did a file system's bookkeeping for each dirty page: measured on a 1.3 GB
sinogram, 0.55 s of the writer's CPU against 0.25-0.35 s when the chunks go to the
disk directly (``O_DIRECT``) from one page-aligned buffer. So the file's structure is
made by HDF5 with every large chunk allocated at creation, 4 KiB aligned
(:func:`aligned_file_access`, :func:`early_chunks`), and the chunks' bytes are written
here at the offsets HDF5 gives for them, once HDF5 has closed the file.

A chunk whose rows lie in memory as whole 4 KiB blocks (a sinogram of 1024 or 2048
columns: each row of each angle is one run of the reducer's angle-major array) goes
to the disk from where it is: one ``pwritev`` of its rows in the file's order
(:func:`chunk_runs`), padding and what reads as zeros taken from one zeroed row. The
copy into a chunk buffer was 0.36 of the 0.49 s of CPU that a 1.3 GB sinogram's file
took (measured here, one thread).

Where ``O_DIRECT`` is not possible (a file system without it, a chunk that is not a
whole number of 4 KiB blocks at an aligned place) the bytes go through the page cache,
which is put to disk and emptied every ``settle_bytes`` (:class:`PageCacheSettler`).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import h5py

logger = logging.getLogger(__name__)

BLOCK = 4096  # O_DIRECT's unit for buffer addresses, file offsets and lengths on common disks
SETTLE_BYTES = 64 << 20
# One memory run of a chunk: ``struct iovec`` as ``pwritev`` reads it.
IOVEC = np.dtype([("base", np.uintp), ("length", np.uintp)])
IOV_MAX = 1024  # Linux's limit of runs per call


def aligned_file_access() -> h5py.h5p.PropFAID:
    """File access properties that put every object of a block or more at a block boundary."""
    import h5py

    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_alignment(BLOCK, BLOCK)
    return fapl


def early_chunks(chunks: tuple[int, ...]) -> h5py.h5p.PropDCID:
    """Dataset creation properties: these chunks, all allocated at creation, never filled."""
    import h5py

    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk(chunks)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # every chunk is written whole afterwards
    return dcpl


def chunk_offsets(dataset: h5py.Dataset, starts: list[tuple[int, ...]]) -> list[int]:
    """Where each chunk (by its first element) lies in the file.

    One pass over the chunk index (``H5Dchunk_iter``) where HDF5 has it: a lookup per
    chunk held the GIL for 36 ms at 1280 chunks (a 1024^2 x 320-angle sinogram), the
    pass 1.6 ms, while the reducer takes the next scan's frames.
    """
    found: dict[tuple[int, ...], tuple[int | None, int]] = {}
    iterate = getattr(dataset.id, "chunk_iter", None)
    if iterate is not None:
        iterate(lambda info: found.__setitem__(tuple(info.chunk_offset), (info.byte_offset, info.filter_mask)))
    offsets = []
    for start in starts:
        if start in found:
            byte_offset, filter_mask = found[start]
        else:
            info = dataset.id.get_chunk_info_by_coord(start)
            byte_offset, filter_mask = info.byte_offset, info.filter_mask
        if byte_offset is None or filter_mask:
            raise OSError(f"{dataset.name}: chunk at {start} is not allocated unfiltered")
        offsets.append(int(byte_offset))
    return offsets


def chunk_runs(
    block: npt.NDArray[np.generic],
    chunks: tuple[int, ...],
    unwritten: npt.NDArray[np.bool_] | None,
    zero_row: int,
) -> npt.NDArray[np.void] | None:
    """The bytes of one chunk in the file's order, as runs of memory (``IOVEC``).

    ``block`` is the chunk's part of the array (a view; smaller than ``chunks`` at the
    array's edges), ``unwritten`` True where it reads as zeros (broadcastable to
    ``block``), ``zero_row`` the address of zeroed memory of at least one chunk row
    (``chunks[-1]`` elements). HDF5 stores a chunk in C order, padded to its full
    shape: each row along the last axis is one run of ``block`` where the memory has
    it, and the zeroed row for padding and for unwritten rows; runs that follow each
    other in memory are merged. None where that does not hold: the last axis not
    contiguous, a negative stride, or ``unwritten`` varying along a row.
    """
    if block.ndim == 0 or block.ndim != len(chunks) or any(s < 0 for s in block.strides):
        return None
    if block.shape[-1] > 1 and block.strides[-1] != block.itemsize:
        return None
    outer = block.shape[:-1]
    data_bytes = block.shape[-1] * block.itemsize
    row_bytes = chunks[-1] * block.itemsize
    address = np.full(outer, block.ctypes.data, dtype=np.uintp)
    for axis, (size, stride) in enumerate(zip(outer, block.strides[:-1], strict=True)):
        shape = [1] * len(outer)
        shape[axis] = size
        address += (np.arange(size, dtype=np.uintp) * np.uintp(stride)).reshape(shape)
    written = np.ones(outer, dtype=bool)
    if unwritten is not None:
        flags = np.broadcast_to(unwritten, block.shape)
        zero = flags[..., 0]
        # A flag per row is broadcast along it (stride 0): no need to look at every element.
        if flags.strides[-1] != 0 and not np.array_equal(flags.any(axis=-1), flags.all(axis=-1)):
            return None
        written = ~zero
    # Two runs per chunk row: the data (or zeros) and the padding past the array's last column.
    runs = np.zeros((*chunks[:-1], 2), dtype=IOVEC)
    runs["base"] = zero_row
    runs["length"][..., 0] = row_bytes
    inside = runs[tuple(slice(0, n) for n in outer)]
    inside["base"][..., 0] = np.where(written, address, zero_row)
    inside["length"][..., 0] = np.where(written, data_bytes, row_bytes)
    inside["length"][..., 1] = np.where(written, row_bytes - data_bytes, 0)
    flat = runs.reshape(-1)
    flat = flat[flat["length"] > 0]
    if not len(flat):
        return flat
    # Merge a run into the one before it where it starts where that one ends: the same bytes.
    ends = flat["base"] + flat["length"]
    starts = np.flatnonzero(np.concatenate(([True], flat["base"][1:] != ends[:-1])))
    merged = np.zeros(len(starts), dtype=IOVEC)
    merged["base"] = flat["base"][starts]
    merged["length"] = np.add.reduceat(flat["length"], starts)
    return merged


def runs_aligned(runs: npt.NDArray[np.void], block: int = BLOCK) -> bool:
    """Whether every run starts and ends on ``block`` boundaries (``O_DIRECT``'s rule)."""
    return not np.any(runs["base"] % block) and not np.any(runs["length"] % block)


@dataclass
class Runs:
    """One chunk's runs (``IOVEC``) and whether they are whole blocks (:func:`runs_aligned`)."""

    iovecs: npt.NDArray[np.void]
    aligned: bool

    @property
    def nbytes(self) -> int:
        return int(self.iovecs["length"].sum())


class DatasetRuns:
    """:func:`chunk_runs` for the chunks of one array, a whole chunk's worked out once.

    Every whole chunk of an array (not at its edge) lies in memory as the first one
    does, moved by its own start: its runs are the first one's, shifted. Worked out per
    chunk, ``chunk_runs`` took 0.13 s of a 1.3 GB sinogram's 0.40 s (1280 chunks).
    Chunks at the edges and chunks with rows that read as zeros are worked out each.
    """

    def __init__(self, chunks: tuple[int, ...], zero_row: int) -> None:
        self.chunks = chunks
        self.zero_row = zero_row
        # A whole chunk's runs relative to its start, and whether they are whole blocks.
        self._whole: tuple[npt.NDArray[np.void], bool] | None = None
        self._layout: tuple[tuple[int, ...], int] = ((), 0)  # the strides and item size it holds for

    def of(self, block: npt.NDArray[np.generic], unwritten: npt.NDArray[np.bool_] | None) -> Runs | None:
        """The runs of ``block``, a chunk's part of the array; ``unwritten`` as for :func:`chunk_runs`."""
        if self._whole is not None and (block.strides, block.itemsize) != self._layout:
            self._whole = None  # another array's layout: its own template
        if block.shape != self.chunks or (unwritten is not None and unwritten.any()):
            runs = chunk_runs(block, self.chunks, unwritten, self.zero_row)
            return None if runs is None else Runs(runs, runs_aligned(runs))
        start = int(block.ctypes.data)
        if self._whole is None:
            runs = chunk_runs(block, self.chunks, None, self.zero_row)
            if runs is None:
                return None
            runs["base"] -= np.uintp(start)  # relative to the chunk's start: none lies before it
            self._whole = (runs, runs_aligned(runs))
            self._layout = (block.strides, block.itemsize)
        relative, aligned = self._whole
        shifted = relative.copy()
        shifted["base"] += np.uintp(start)
        return Runs(shifted, aligned and start % BLOCK == 0)


@functools.cache
def _libc_pwritev() -> Callable[[int, int, int, int], int] | None:
    """libc's ``pwritev(fd, iov, iovcnt, offset)`` through ctypes (which releases the GIL), or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pwritev = libc.pwritev
    except (OSError, AttributeError):
        return None
    pwritev.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong]
    pwritev.restype = ctypes.c_ssize_t
    return pwritev


def pwritev_all(fd: int, runs: npt.NDArray[np.void], offset: int) -> None:
    """Write ``runs`` (``IOVEC``) one after another at ``offset``, however many calls it takes."""
    pwritev = _libc_pwritev()
    if pwritev is None:
        raise OSError("no pwritev in this C library")
    runs = np.array(runs, dtype=IOVEC)  # a copy: a short write edits it
    while len(runs):
        count = min(len(runs), IOV_MAX)
        written = pwritev(fd, runs.ctypes.data, count, offset)
        if written < 0:
            error = ctypes.get_errno()
            if error == errno.EINTR:
                continue
            raise OSError(error, os.strerror(error))
        if written == 0:
            raise OSError(f"pwritev wrote nothing at {offset}")
        offset += written
        done = np.cumsum(runs["length"][:count])
        whole = int(np.searchsorted(done, written, side="right"))  # runs written completely
        part = written - (int(done[whole - 1]) if whole else 0)  # of the next one: a short write
        if part:
            runs["base"][whole] += np.uintp(part)
            runs["length"][whole] -= np.uintp(part)
        runs = runs[whole:]


class ChunkBuffer:
    """One chunk's page-aligned buffer, reused for every chunk of a dataset."""

    def __init__(self, chunks: tuple[int, ...], dtype: npt.DTypeLike) -> None:
        self.nbytes = int(np.prod(chunks)) * np.dtype(dtype).itemsize
        self._memory = mmap.mmap(-1, max(-(-self.nbytes // BLOCK) * BLOCK, BLOCK))
        count = int(np.prod(chunks))
        self.array: npt.NDArray[np.generic] = np.frombuffer(self._memory, dtype=dtype, count=count).reshape(chunks)

    def view(self) -> memoryview:
        return memoryview(self._memory)[: self.nbytes]

    @property
    def address(self) -> int:
        """Where the buffer starts in memory (page aligned)."""
        return int(self.array.ctypes.data)


class RawChunkWriter:
    """Writes buffers at file offsets: ``O_DIRECT`` where it can, else through the page cache."""

    def __init__(self, path: str | os.PathLike[str], *, direct: bool = True) -> None:
        self._buffered = os.open(path, os.O_WRONLY)
        self._direct: int | None = None
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self._direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
            except OSError as error:  # tmpfs and some network file systems
                logger.debug("no O_DIRECT for %s: %s", path, error)
        self._settler = PageCacheSettler(self._buffered, SETTLE_BYTES)
        self.direct_bytes = 0
        self.buffered_bytes = 0
        # Runs of chunks that follow each other in the file, not yet written (write_runs).
        self._pending: list[npt.NDArray[np.void]] = []
        self._keep: list[object] = []  # what the waiting runs point into, alive until written
        self._pending_count = 0
        self._pending_offset = 0
        self._pending_end = 0
        self.calls = 0  # pwritev calls for runs: what batching saves

    def write(self, buffer: memoryview, offset: int) -> None:
        """Write ``buffer`` (page aligned in memory) at ``offset`` of the file."""
        self.flush()
        head, direct = 0, self._direct
        if direct is not None and offset % BLOCK == 0:
            head = len(buffer) - len(buffer) % BLOCK
        if direct is not None and head:
            try:
                written = os.pwrite(direct, buffer[:head], offset)
            except OSError as error:  # the file system took the open, not the write
                logger.info("writing without O_DIRECT: %s", error)
                os.close(direct)
                self._direct, head = None, 0
            else:
                if written != head:
                    raise OSError(f"short write: {written} of {head} bytes at {offset}")
                self.direct_bytes += head
        if head < len(buffer):  # a tail shorter than a block, or no O_DIRECT
            self._pwrite_all(buffer[head:], offset + head)
            self.buffered_bytes += len(buffer) - head
            self._settler.written(len(buffer) - head)

    def takes_runs(self, runs: Runs, offset: int) -> bool:
        """Whether :meth:`write_runs` writes these runs the cheapest way: past the page
        cache when they are whole blocks, through it when the file system has no
        ``O_DIRECT`` anyway. Otherwise a gathered copy past the page cache costs less
        than the page cache."""
        if _libc_pwritev() is None:
            return False
        return self._direct is None or (offset % BLOCK == 0 and runs.aligned)

    def write_runs(self, runs: Runs, offset: int, keep: object = None) -> None:
        """Write the memory ``runs`` (:class:`DatasetRuns`) one after another at ``offset``.

        Runs that continue the file where the previous ones end wait to go with them, up
        to :data:`IOV_MAX` runs in one ``pwritev``; :meth:`flush` (or :meth:`write`,
        :meth:`close`) writes what waits. A 16 x 16-row chunk of a 1024-column sinogram
        is 256 runs: one call each cost 0.17-0.19 s of CPU per GiB past the page cache,
        calls of 1024 runs 0.10-0.13 s (measured here). ``keep`` (the arrays and buffers
        the runs point into) is held until they are written; the bytes must not change
        meanwhile (the scan's final arrays: they no longer do).
        """
        if self._pending and (offset != self._pending_end or self._pending_count + len(runs.iovecs) > IOV_MAX):
            self.flush()
        if not self._pending:
            self._pending_offset = offset
        self._pending.append(runs.iovecs)
        self._keep.append(keep)
        self._pending_count += len(runs.iovecs)
        self._pending_end = offset + runs.nbytes
        if self._pending_count >= IOV_MAX:
            self.flush()

    def flush(self) -> None:
        """Write the runs that wait (:meth:`write_runs`)."""
        if not self._pending:
            return
        iovecs = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        offset, nbytes = self._pending_offset, self._pending_end - self._pending_offset
        self._pending, self._pending_count = [], 0
        self.calls += 1
        try:
            self._write_iovecs(iovecs, offset, nbytes)
        finally:
            self._keep.clear()  # what the runs pointed into may go now

    def _write_iovecs(self, iovecs: npt.NDArray[np.void], offset: int, nbytes: int) -> None:
        direct = self._direct
        if direct is not None:
            try:
                pwritev_all(direct, iovecs, offset)
            except OSError as error:  # the file system took the open, not these writes
                logger.info("writing without O_DIRECT: %s", error)
                os.close(direct)
                self._direct = None
            else:
                self.direct_bytes += nbytes
                return
        pwritev_all(self._buffered, iovecs, offset)
        self.buffered_bytes += nbytes
        self._settler.written(nbytes)

    def _pwrite_all(self, data: memoryview, offset: int) -> None:
        while len(data):
            written = os.pwrite(self._buffered, data, offset)
            data, offset = data[written:], offset + written

    def close(self) -> None:
        """Everything on disk, then both descriptors closed."""
        try:
            self.flush()
            os.fdatasync(self._buffered)  # also what went past the page cache: the file's size and blocks
        finally:
            os.close(self._buffered)
            if self._direct is not None:
                os.close(self._direct)


class PageCacheSettler:
    """Every ``settle_bytes`` written through the page cache: to disk (``fdatasync``), then out of it.

    Without it the page cache filled with each scan's file and writing got dearer
    scan after scan: four 1.3 GB files in a row took 0.5, 2.3, 4.3 and 4.8 s of the
    writer's CPU here (the kernel's work for dirty and reclaimed pages), against a
    steady 0.75 s with this.
    """

    def __init__(self, fd: int, settle_bytes: int) -> None:
        self._fd: int | None = fd if hasattr(os, "posix_fadvise") else None
        self._settle_bytes = settle_bytes
        self._pending = 0

    def written(self, nbytes: int) -> None:
        self._pending += nbytes
        if self._fd is None or self._pending < self._settle_bytes:
            return
        self._pending = 0
        try:
            os.fdatasync(self._fd)
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as error:  # a file system that cannot: the page cache keeps it
            logger.debug("not settling %s: %s", self._fd, error)
            self._fd = None
