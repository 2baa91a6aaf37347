"""Write a domain to a NeXus/HDF5 file with the same layout (the final result)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from streamtomo.hsds_bridge.domain import AttrValue, Domain, DomainDataset, DomainGroup

if TYPE_CHECKING:
    import h5py

# Large datasets are copied this much at a time (or one chunk, where a chunk is larger).
BLOCK_BYTES = 4 << 20


def _attr(value: Any) -> Any:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return np.array(value, dtype=object)
    return value


@dataclass
class _Node:
    """One node as the first (locked) pass saw it: ``data`` holds a copy, ``source`` a large array."""

    path: str
    attrs: dict[str, AttrValue]
    is_group: bool = False
    data: Any = None
    source: npt.NDArray[Any] | None = None
    chunks: tuple[int, ...] | None = None


def write_nexus(domain: Domain, path: str | Path, *, block_bytes: int = BLOCK_BYTES) -> Path:
    """Copy every group, dataset and attribute of ``domain`` into ``path``.

    The file is written under a hidden temporary name in the same folder and renamed
    when complete: a reader (or a glob for ``*.nxs``) never sees half a file, and a
    failed write leaves none.

    Memory and the lock stay bounded: everything up to ``block_bytes`` (status,
    parameters, attributes, axes) is copied in one locked pass, so the file's status is
    one moment of the scan. Larger datasets follow in blocks of whole chunks, each copied
    under ``domain.lock`` and written outside it, so the extra memory is one block and
    the domain's readers wait for one block copy at most. Given whole, h5py would first
    make a C-ordered copy of the sinogram (an angle-major array seen as (rows, angles,
    cols)): as much memory again as the largest array of the scan. The large arrays are
    the scan's final products: they no longer change once the scan has ended, when the
    reducer writes this file.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per writer: two writers of one name never write into each other's file.
    partial = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.part")
    try:
        with h5py.File(partial, "w") as f:
            for node in _plan(domain, block_bytes):
                _write_node(f, node, domain, block_bytes)
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
                nodes.append(_Node(node.path, dict(node.attrs), source=array, chunks=chunks))
    return nodes


def _write_node(f: h5py.File, node: _Node, domain: Domain, block_bytes: int) -> None:
    import h5py

    target: h5py.Group | h5py.Dataset
    if node.is_group:
        target = f if node.path == "/" else f.require_group(node.path)
    elif isinstance(node.data, str):
        target = f.create_dataset(node.path, data=node.data, dtype=h5py.string_dtype())
    elif node.source is None:
        target = f.create_dataset(node.path, data=node.data, chunks=node.chunks)
    else:
        source = node.source
        assert node.chunks is not None  # a large array has elements, hence chunks
        target = f.create_dataset(node.path, shape=source.shape, dtype=source.dtype, chunks=node.chunks)
        for selection in blocks(source.shape, node.chunks, source.itemsize, block_bytes):
            with domain.lock:
                block = np.ascontiguousarray(source[selection])
            target[selection] = block
            del block  # before the next copy: one block alive at a time
    for key, value in node.attrs.items():
        target.attrs[key] = _attr(value)


def blocks(
    shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int, block_bytes: int
) -> Iterator[tuple[slice, ...]]:
    """Selections covering ``shape`` in C order, each whole chunks of at most
    ``block_bytes`` (one chunk where a chunk alone is larger).

    Whole chunks: HDF5 writes each once, never reading back a chunk it wrote in part.
    The block grows from the last axis, as far as the budget allows: the sinogram's
    chunks are (rows, angles, all columns), so a block is a few rows by many angles.
    """
    block = list(chunks)
    size = int(np.prod(chunks)) * itemsize
    for axis in reversed(range(len(shape))):
        factor = min(-(-shape[axis] // block[axis]), max(block_bytes // size, 1))
        block[axis] *= factor
        size *= factor
        if block[axis] < shape[axis]:
            break  # this axis is cut into pieces: growing an earlier one would not join them
    starts = [range(0, n, b) for n, b in zip(shape, block, strict=True)]
    for corner in np.ndindex(*(len(r) for r in starts)):
        yield tuple(slice(r[i], min(r[i] + b, n)) for r, i, b, n in zip(starts, corner, block, shape, strict=True))
