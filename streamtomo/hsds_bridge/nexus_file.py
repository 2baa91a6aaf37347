"""Write a domain to a NeXus/HDF5 file with the same layout (the final result)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamtomo.hsds_bridge.domain import AttrValue, Domain, DomainDataset, DomainGroup

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import h5py

# Datasets up to this size are copied in the first locked pass; larger ones a chunk at a time.
BLOCK_BYTES = 4 << 20
# Written data is put on disk and out of the page cache every this many bytes (_PageCacheSettler).
SETTLE_BYTES = 64 << 20


def _attr(value: Any) -> Any:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return np.array(value, dtype=object)
    return value


@dataclass
class _Node:
    """One node as the first (locked) pass saw it: ``data`` holds a copy, ``large`` a large dataset."""

    path: str
    attrs: dict[str, AttrValue]
    is_group: bool = False
    data: Any = None
    large: DomainDataset | None = None
    chunks: tuple[int, ...] | None = None


def write_nexus(domain: Domain, path: str | Path, *, block_bytes: int = BLOCK_BYTES) -> Path:
    """Copy every group, dataset and attribute of ``domain`` into ``path``.

    The file is written under a hidden temporary name in the same folder and renamed
    when complete: a reader (or a glob for ``*.nxs``) never sees half a file, and a
    failed write leaves none.

    Memory and the lock stay bounded: everything up to ``block_bytes`` (status,
    parameters, attributes, axes) is copied in one locked pass, so the file's status is
    one moment of the scan. Larger datasets follow a chunk at a time (:func:`_write_chunks`),
    each chunk gathered under ``domain.lock`` into one reused buffer and written outside
    it, so the extra memory is one chunk and the domain's readers wait for one chunk
    copy at most. The large arrays are the scan's final products: they no longer change
    once the scan has ended, when the reducer writes this file.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per writer: two writers of one name never write into each other's file.
    partial = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.part")
    try:
        with h5py.File(partial, "w") as f:
            for node in _plan(domain, block_bytes):
                _write_node(f, node, domain)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def _plan(domain: Domain, block_bytes: int) -> list[_Node]:
    """The tree in one locked pass: small datasets copied, large ones referenced."""
    nodes = []
    with domain.lock:
        for node in domain.walk():
            if isinstance(node, DomainGroup):
                nodes.append(_Node(node.path, dict(node.attrs), is_group=True))
                continue
            assert isinstance(node, DomainDataset)
            array = node.array
            chunks = node.chunks if array.ndim and array.size else None
            if node.is_string:
                nodes.append(_Node(node.path, dict(node.attrs), data=str(array[()])))
            elif array.nbytes <= block_bytes:
                nodes.append(_Node(node.path, dict(node.attrs), data=np.array(array), chunks=chunks))
            else:
                nodes.append(_Node(node.path, dict(node.attrs), large=node, chunks=chunks))
    return nodes


def _write_node(f: h5py.File, node: _Node, domain: Domain) -> None:
    import h5py

    target: h5py.Group | h5py.Dataset
    if node.is_group:
        target = f if node.path == "/" else f.require_group(node.path)
    elif isinstance(node.data, str):
        target = f.create_dataset(node.path, data=node.data, dtype=h5py.string_dtype())
    elif node.large is None:
        target = f.create_dataset(node.path, data=node.data, chunks=node.chunks)
    else:
        assert node.chunks is not None  # a large array has elements, hence chunks
        target = f.create_dataset(node.path, shape=node.large.shape, dtype=node.large.dtype, chunks=node.chunks)
        _write_chunks(target, node.large, node.chunks, domain)
    for key, value in node.attrs.items():
        target.attrs[key] = _attr(value)


def _write_chunks(target: h5py.Dataset, dataset: DomainDataset, chunks: tuple[int, ...], domain: Domain) -> None:
    """Write ``dataset`` into ``target`` (unfiltered, chunked as ``chunks``, the
    dataset's own) one whole chunk at a time.

    Each chunk is gathered into one reused C-ordered buffer (the sinogram is an
    angle-major array seen as (rows, angles, cols): a chunk is a few rows of each of a
    few angles) and handed to HDF5 as the chunk's bytes (``H5Dwrite_chunk``). Through
    ``Dataset.__setitem__`` HDF5 copied every block once more into its own chunk
    buffers: the file of a 1.3 GB scan took 2 s of the reducer's CPU, more than the
    scan's 300 projections cost it. Edge chunks are padded (HDF5 stores whole chunks).
    """
    buffer = np.empty(chunks, dtype=dataset.dtype)
    settle = _PageCacheSettler(target)
    for corner in np.ndindex(*dataset.chunk_grid()):
        selection = dataset.chunk_selection(corner)
        inside = tuple(slice(0, s.stop - s.start) for s in selection)
        if any(s.stop < c for s, c in zip(inside, chunks, strict=True)):  # an edge chunk
            buffer.fill(0)
        with domain.lock:
            np.copyto(buffer[inside], dataset.array[selection])
        target.id.write_direct_chunk(tuple(s.start for s in selection), buffer)
        settle.written(buffer.nbytes)


class _PageCacheSettler:
    """Every ``SETTLE_BYTES`` written: to disk (``fdatasync``), then out of the page cache.

    Without it the page cache filled with each scan's file and writing got dearer
    scan after scan: four 1.3 GB files in a row took 0.5, 2.3, 4.3 and 4.8 s of the
    writer's CPU here (the kernel's work for dirty and reclaimed pages), against a
    steady 0.75 s with this, and the file is on disk when it is renamed into place.
    """

    def __init__(self, target: h5py.Dataset) -> None:
        self._pending = 0
        self._fd: int | None = None
        with contextlib.suppress(Exception):  # drivers without a file descriptor: nothing to settle
            fd = target.file.id.get_vfd_handle()
            self._fd = fd if isinstance(fd, int) and hasattr(os, "posix_fadvise") else None

    def written(self, nbytes: int) -> None:
        self._pending += nbytes
        if self._fd is None or self._pending < SETTLE_BYTES:
            return
        self._pending = 0
        try:
            os.fdatasync(self._fd)
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as error:  # a file system that cannot: the page cache keeps it
            logger.debug("not settling %s: %s", self._fd, error)
            self._fd = None
