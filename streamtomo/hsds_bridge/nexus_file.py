"""Write a domain to a NeXus/HDF5 file with the same layout (the final result)."""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamtomo.hsds_bridge.domain import AttrValue, Domain, DomainDataset, DomainGroup
from streamtomo.hsds_bridge.raw_chunks import (
    ChunkBuffer,
    DatasetRuns,
    RawChunkWriter,
    aligned_file_access,
    chunk_offsets,
    early_chunks,
)

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import h5py

# Datasets up to this size are copied in the first locked pass; larger ones a chunk at a time.
BLOCK_BYTES = 4 << 20


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


def write_nexus(
    domain: Domain,
    path: str | Path,
    *,
    block_bytes: int = BLOCK_BYTES,
    direct: bool = True,
    describe: Callable[[h5py.File], None] | None = None,
    leading: Mapping[str, int] | None = None,
) -> Path:
    """Copy every group, dataset and attribute of ``domain`` into ``path``.

    ``describe``: called with the open file once the domain's nodes are in it (before
    the large datasets' chunks are written), to add what only the file says.
    ``leading``: datasets filled along their first axis that stopped part-way, by path:
    how many leading entries hold values. Only those are written (0: the dataset is
    left out): a file is what was computed, not gigabytes of zeros beside a note. A
    ``default`` attribute whose target is not in the file is left out (a scan that
    failed before its first projection has no reconstruction to point to).

    The file is written under a hidden temporary name in the same folder and renamed
    when complete: a reader (or a glob for ``*.nxs``) never sees half a file, and a
    failed write leaves none.

    Memory and the lock stay bounded: everything up to ``block_bytes`` (status,
    parameters, attributes, axes) is copied in one locked pass, so the file's status is
    one moment of the scan. Larger datasets are made by HDF5 with their chunks allocated
    and then filled a chunk at a time once HDF5 has closed the file (:func:`_write_chunks`,
    ``O_DIRECT`` where ``direct`` and the file system allow: :mod:`.raw_chunks`), each
    chunk gathered under ``domain.lock`` into one reused buffer, so the extra memory is
    one chunk and the domain's readers wait for one chunk copy at most. The large
    arrays are the scan's final products: they no longer change once the scan has
    ended, when the reducer writes this file.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per writer: two writers of one name never write into each other's file.
    partial = path.with_name(f".{path.name}.{os.getpid()}-{WRITER_TOKEN}-{threading.get_ident()}{PARTIAL_SUFFIX}")
    try:
        large: list[_LargeDataset] = []
        file_id = h5py.h5f.create(os.fsencode(partial), h5py.h5f.ACC_TRUNC, fapl=aligned_file_access())
        with h5py.File(file_id) as f:
            with_default: list[str] = []  # the groups whose default to check, not every group of the file
            for node in _plan(domain, block_bytes, leading or {}):
                created = _write_node(f, node)
                if created is not None:
                    large.append(created)
                if node.is_group and "default" in node.attrs:
                    with_default.append(node.path)
            _drop_dangling_defaults(f, with_default)
            if describe is not None:
                describe(f)
        writer = RawChunkWriter(partial, direct=direct)
        try:
            for dataset in large:
                _write_chunks(writer, dataset, domain)
        finally:
            writer.close()
        logger.debug(
            "%s: %d bytes past the page cache, %d through it", path, writer.direct_bytes, writer.buffered_bytes
        )
        # On disk before it has its name, and the name on disk after: a power cut left a
        # renamed file empty or part-written (nothing was synced), which README calls
        # "complete and on disk".
        _fsync(partial)
        os.replace(partial, path)
        _fsync(path.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


PARTIAL_SUFFIX = ".part"
# A partial file untouched this long, of a process that is not running here, was left by
# a writer that died (a killed reducer): write_nexus renames its file only when complete.
ORPHAN_AGE_S = 3600.0
# This process's mark in its partials' names, beside its number: a container's process
# is number 1 after every restart, and the partial a killed one left looked like a
# writer of this process, running, and stayed on the results volume for good.
WRITER_TOKEN = secrets.token_hex(4)
# .NAME.PID-TOKEN-TID.part (and .NAME.PID-TID.part, as earlier versions named them)
_PARTIAL_NAME = re.compile(r"^\..+\.(\d+)-(?:([0-9a-f]{8})-)?\d+" + re.escape(PARTIAL_SUFFIX) + "$")


def remove_orphaned_partials(folder: str | os.PathLike[str], older_than_s: float = ORPHAN_AGE_S) -> list[Path]:
    """Remove the partial files (write_nexus's ``.NAME.PID-TOKEN-TID.part``) in ``folder``
    that a writer which died left: their process is not running on this machine (or is
    this one under the same number, in an earlier life) and they were not written to for
    ``older_than_s`` (a folder other machines write to too may
    hold their writers' partials, in use, under process numbers not running here).
    Each was up to a whole scan's size and nothing else ever removed it. Returns them."""
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _PARTIAL_NAME.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < older_than_s or _writing(int(match[1]), match[2]):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def _writing(pid: int, token: str | None) -> bool:
    """Whether the writer of a partial may still be writing it: this process, if the
    partial has its token (a partial under this process's number and another token was
    left by a process that had the same number: a container's earlier life); another
    process, if it runs here."""
    if pid == os.getpid():
        return token == WRITER_TOKEN
    return _running(pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _drop_dangling_defaults(f: h5py.File, paths: list[str]) -> None:
    """NeXus readers follow ``default`` from the root: one to a missing member leads
    nowhere. ``paths``: the groups that have one (the file's own walk took 3 ms a scan)."""
    for path in paths:
        group = f[path]
        target = group.attrs.get("default")
        if isinstance(target, bytes):
            target = target.decode()
        if isinstance(target, str) and target not in group:
            del group.attrs["default"]


def _plan(domain: Domain, block_bytes: int, leading: Mapping[str, int]) -> list[_Node]:
    """The tree in one locked pass: small datasets copied, large ones referenced."""
    nodes = []
    with domain.lock:
        for node in domain.walk():
            if isinstance(node, DomainGroup):
                nodes.append(_Node(node.path, dict(node.attrs), is_group=True))
                continue
            assert isinstance(node, DomainDataset)
            if node.path in leading:
                if leading[node.path] <= 0 or not node.array.ndim:
                    continue
                node = _leading_part(node, leading[node.path])
            array = node.array
            chunks = node.chunks if array.ndim and array.size else None
            if node.is_string:
                nodes.append(_Node(node.path, dict(node.attrs), data=str(array[()])))
            elif array.nbytes <= block_bytes:
                nodes.append(_Node(node.path, dict(node.attrs), data=node.copy_selection(()), chunks=chunks))
            else:
                nodes.append(_Node(node.path, dict(node.attrs), large=node, chunks=chunks))
    return nodes


def _leading_part(dataset: DomainDataset, n: int) -> DomainDataset:
    """The first ``n`` entries along ``dataset``'s first axis, as a dataset of their own
    (a view: nothing is copied here)."""
    if n >= dataset.shape[0]:
        return dataset
    chunks = dataset.chunks or dataset.shape
    unwritten = dataset.unwritten
    if unwritten is not None and unwritten.ndim == dataset.array.ndim and unwritten.shape[0] > 1:
        unwritten = unwritten[:n]
    return DomainDataset(
        dataset.path, dataset.array[:n], dict(dataset.attrs), (min(chunks[0], n), *chunks[1:]), unwritten
    )


@dataclass
class _LargeDataset:
    """A large dataset whose chunks are allocated in the file: where each one goes."""

    source: DomainDataset
    chunks: tuple[int, ...]
    corners: list[tuple[int, ...]]
    offsets: list[int]


def _write_node(f: h5py.File, node: _Node) -> _LargeDataset | None:
    import h5py

    target: h5py.Group | h5py.Dataset
    large = None
    if node.is_group:
        target = f if node.path == "/" else f.require_group(node.path)
    elif isinstance(node.data, str):
        target = f.create_dataset(node.path, data=node.data, dtype=h5py.string_dtype())
    elif node.large is None:
        target = f.create_dataset(node.path, data=node.data, chunks=node.chunks)
    else:
        assert node.chunks is not None  # a large array has elements, hence chunks
        source = node.large
        target = f.create_dataset(
            node.path, shape=source.shape, dtype=source.dtype, chunks=node.chunks, dcpl=early_chunks(node.chunks)
        )
        corners = list(np.ndindex(*source.chunk_grid()))
        starts = [tuple(s.start for s in source.chunk_selection(corner)) for corner in corners]
        large = _LargeDataset(source, node.chunks, corners, chunk_offsets(target, starts))
    for key, value in node.attrs.items():
        target.attrs[key] = _attr(value)
    return large


def _write_chunks(writer: RawChunkWriter, large: _LargeDataset, domain: Domain) -> None:
    """Write ``large`` (unfiltered, chunked as its source is) one whole chunk at a time.

    A chunk whose rows the writer can take from where they lie in memory goes as they
    are (:func:`~.raw_chunks.chunk_runs`: the sinogram's rows of 1024 or 2048 columns,
    past the page cache). Any other chunk is gathered into one reused C-ordered,
    page-aligned buffer (the sinogram is an angle-major array seen as (rows, angles,
    cols): a chunk is a few rows of each of a few angles) and written from there.
    Through ``Dataset.__setitem__`` HDF5 copied every block once more into its own
    chunk buffers, and through ``H5Dwrite_chunk`` the kernel copied it into the page
    cache. Edge chunks are padded (HDF5 stores whole chunks). Either way a chunk is
    taken under ``domain.lock`` (its runs worked out, or its copy made) and written
    after the lock is let go: readers of the domain never wait for the disk.
    """
    dataset, chunks = large.source, large.chunks
    buffer = ChunkBuffer(chunks, dataset.dtype)
    zero_row = ChunkBuffer(chunks[-1:], dataset.dtype)  # stays zeros: padding and unwritten rows
    runs_of = DatasetRuns(chunks, zero_row.address)
    for corner, offset in zip(large.corners, large.offsets, strict=True):
        selection = dataset.chunk_selection(corner)
        inside = tuple(slice(0, s.stop - s.start) for s in selection)
        with domain.lock:
            block = dataset.array[selection]
            runs = runs_of.of(block, _unwritten_part(dataset.unwritten, selection))
            if runs is not None and not writer.takes_runs(runs, offset):
                runs = None
            if runs is None:
                if any(s.stop < c for s, c in zip(inside, chunks, strict=True)):  # an edge chunk
                    buffer.array.fill(0)
                np.copyto(buffer.array[inside], block)
                dataset.zero_unwritten(buffer.array[inside], itemgetter(selection))
        if runs is not None:
            # Outside the lock, as a gathered chunk's write, and maybe with the chunks that
            # follow it in the file: ``block`` and ``zero_row`` keep the memory the runs
            # point into, and the scan's arrays no longer change (see the docstring).
            writer.write_runs(runs, offset, keep=(block, zero_row))
        else:
            writer.write(buffer.view(), offset)


def _unwritten_part(unwritten: np.ndarray | None, selection: tuple[slice, ...]) -> np.ndarray | None:
    """``unwritten``'s part for ``selection``, in its own (broadcastable) shape: the axes
    it broadcasts along are taken whole, so checking it costs its own size."""
    if unwritten is None:
        return None
    own = selection[len(selection) - unwritten.ndim :]
    return unwritten[tuple(slice(None) if n == 1 else s for n, s in zip(unwritten.shape, own, strict=True))]
