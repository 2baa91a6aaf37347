"""Which bytes to send: chunk copies, what changed in them, and as few requests as possible.

No network here. The writer copies dirty chunks out of the domain (:func:`copy_chunk`),
remembers what the server holds for each chunk (its *shadow*), and sends only the
bounding box of what differs (:func:`changed_box`), merging boxes that touch into one
request (:func:`merge_boxes`): one projection touching 16 sinogram chunks becomes a
single ``PUT`` of that projection's bytes.

Dataset arrays may be any strided numpy view (a transposed, angle-major sinogram
served as rows x angles x cols): copies are always made C-ordered in the dataset's
wire dtype, and every comparison works on those copies.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from streamtomo.hsds_bridge.domain import AttrValue, ChunkIndex, DomainDataset, DomainGroup
from streamtomo.hsds_bridge.rest_types import wire_dtype

ChunkKey = tuple[str, ChunkIndex]


@dataclass(eq=False)
class ChunkCopy:
    """One chunk as it was at notify time (wire dtype, C order), or a scalar string."""

    path: str
    index: ChunkIndex
    origin: tuple[int, ...]
    data: npt.NDArray[Any] | str
    nbytes: int
    version: int = 0  # of the dataset node: a replaced dataset gets a new HSDS object

    @property
    def key(self) -> ChunkKey:
        return (self.path, self.index)


@dataclass(frozen=True, eq=False)  # identity: attrs may hold arrays
class NodeSnapshot:
    """The structure of a group or dataset at capture time (attrs copied)."""

    path: str
    attrs: dict[str, AttrValue]
    dtype: np.dtype[Any] | None = None  # None: group
    shape: tuple[int, ...] = ()
    chunks: tuple[int, ...] = ()
    version: int = 0

    def same_layout(self, other: NodeSnapshot) -> bool:
        return (self.dtype, self.shape, self.chunks) == (other.dtype, other.shape, other.chunks)

    @property
    def is_group(self) -> bool:
        return self.dtype is None

    @property
    def parent(self) -> str:
        return self.path.rpartition("/")[0] or "/"

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def depth(self) -> int:
        return self.path.count("/") if self.path != "/" else 0


@dataclass(eq=False)
class ChangedBox:
    """A hyperslab to write: global ``[lo, hi)`` and its data, taken from ``members``."""

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    data: npt.NDArray[Any]
    members: list[ChunkCopy]


class ServerHoldsZeros:
    """Shadow marker: a dataset we created holds its fill value (zeros) in this chunk."""


class ServerContentUnknown:
    """Shadow marker: the server may hold anything (e.g. after a restart): send it all."""


ZEROS = ServerHoldsZeros()
UNKNOWN = ServerContentUnknown()
Shadow = npt.NDArray[Any] | str | ServerHoldsZeros | ServerContentUnknown


def capture_node(node: DomainGroup | DomainDataset, version: int = 0) -> NodeSnapshot:
    """Snapshot of ``node``'s structure; TypeError for what HSDS cannot hold."""
    attrs = {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in node.attrs.items()}
    if isinstance(node, DomainGroup):
        return NodeSnapshot(node.path, attrs)
    if node.is_string and node.array.ndim:
        raise TypeError(f"{node.path}: only scalar string datasets are supported")
    assert node.chunks is not None
    return NodeSnapshot(node.path, attrs, wire_dtype(node.dtype), node.shape, tuple(node.chunks), version)


def copy_chunk(ds: DomainDataset, node: NodeSnapshot, index: ChunkIndex) -> ChunkCopy:
    """Copy one chunk in the dataset's wire dtype (never the array's own, see rest_types)."""
    sel = ds.chunk_selection(index)
    origin = tuple(s.start for s in sel)
    if ds.is_string:
        value = ds.array[()]
        text = value.decode() if isinstance(value, bytes) else str(value)
        return ChunkCopy(ds.path, index, origin, text, len(text.encode()), node.version)
    assert node.dtype is not None
    view = ds.array[sel] if sel else ds.array[()]
    # order="C": the view may be strided (a transposed array); the wire wants C order.
    data = np.array(view, dtype=node.dtype, order="C", copy=True)
    ds.zero_unwritten(data, itemgetter(sel))
    return ChunkCopy(ds.path, index, origin, data, data.nbytes, node.version)


def chunk_nbytes(ds: DomainDataset, index: ChunkIndex) -> int:
    """What :func:`copy_chunk` would hold, without copying."""
    if ds.is_string:
        return len(str(ds.array[()]).encode())
    size = 1
    for s in ds.chunk_selection(index):
        size *= s.stop - s.start
    return int(ds.dtype.itemsize * size)


def _bits(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Items as unsigned ints (bitwise compare: NaN == NaN, -0.0 != 0.0), or as bytes."""
    a = np.ascontiguousarray(a)
    if a.itemsize in (1, 2, 4, 8):
        return a.view(f"u{a.itemsize}")
    return a.view(np.uint8).reshape((*a.shape, a.itemsize))


def changed_box(chunk: ChunkCopy, shadow: Shadow) -> ChangedBox | None:
    """Bounding box of what differs from ``shadow`` (bitwise), None if nothing."""
    data = chunk.data
    assert isinstance(data, np.ndarray)
    hi_full = tuple(o + n for o, n in zip(chunk.origin, data.shape, strict=True))
    if isinstance(shadow, ServerContentUnknown) or data.ndim == 0:
        if isinstance(shadow, np.ndarray) and shadow.tobytes() == data.tobytes():
            return None
        return ChangedBox(chunk.origin, hi_full, data, [chunk])
    bits = _bits(data)
    if isinstance(shadow, ServerHoldsZeros):
        ne = bits != 0
    elif isinstance(shadow, np.ndarray):
        ne = bits != _bits(shadow)
    else:
        return ChangedBox(chunk.origin, hi_full, data, [chunk])
    if ne.ndim > data.ndim:  # bytes of wider items: an item differs if any byte does
        ne = ne.any(axis=-1)
    bounds = bounding_box(ne)
    if bounds is None:
        return None
    lo, hi = bounds
    sub = data[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    glo = tuple(o + a for o, a in zip(chunk.origin, lo, strict=True))
    ghi = tuple(o + b for o, b in zip(chunk.origin, hi, strict=True))
    return ChangedBox(glo, ghi, sub, [chunk])


def bounding_box(ne: npt.NDArray[np.bool_]) -> tuple[list[int], list[int]] | None:
    """``[lo, hi)`` per axis around the True items; None if there are none.

    One pass over the whole mask (rows of the last axis), then only small arrays:
    the diff runs for every dirty chunk of every update.
    """
    rows: npt.NDArray[np.bool_] = np.any(ne.reshape(-1, ne.shape[-1]), axis=1)
    hit = np.flatnonzero(rows)
    if hit.size == 0:
        return None
    lead = rows.reshape(ne.shape[:-1])
    lo, hi = [], []
    for axis in range(lead.ndim):
        others = tuple(a for a in range(lead.ndim) if a != axis)
        idx = np.flatnonzero(np.any(lead, axis=others) if others else lead)
        lo.append(int(idx[0]))
        hi.append(int(idx[-1]) + 1)
    last = np.flatnonzero(ne.reshape(-1, ne.shape[-1])[hit].any(axis=0))
    lo.append(int(last[0]))
    hi.append(int(last[-1]) + 1)
    return lo, hi


def merge_boxes(boxes: list[ChangedBox], limit: int) -> list[ChangedBox]:
    """Merge boxes that touch along one axis and match on the others (<= limit bytes)."""
    if len(boxes) < 2:
        return boxes
    ndim = len(boxes[0].lo)
    changed = True
    while changed:
        changed = False
        for axis in range(ndim):
            groups: dict[tuple[Any, ...], list[ChangedBox]] = defaultdict(list)
            for b in boxes:
                groups[b.lo[:axis] + b.lo[axis + 1 :] + b.hi[:axis] + b.hi[axis + 1 :]].append(b)
            merged: list[ChangedBox] = []
            for group in groups.values():
                merged.extend(_merge_runs(sorted(group, key=lambda b: b.lo[axis]), axis, limit))
            changed = changed or len(merged) < len(boxes)
            boxes = merged
    return boxes


def _merge_runs(group: list[ChangedBox], axis: int, limit: int) -> list[ChangedBox]:
    out: list[ChangedBox] = []
    run = [group[0]]
    size = group[0].data.nbytes
    for b in group[1:]:
        if b.lo[axis] == run[-1].hi[axis] and size + b.data.nbytes <= limit:
            run.append(b)
            size += b.data.nbytes
            continue
        out.append(_concat(run, axis))
        run, size = [b], b.data.nbytes
    out.append(_concat(run, axis))
    return out


def _concat(run: list[ChangedBox], axis: int) -> ChangedBox:
    if len(run) == 1:
        return run[0]
    hi = (*run[0].hi[:axis], run[-1].hi[axis], *run[0].hi[axis + 1 :])
    data = np.concatenate([b.data for b in run], axis=axis)
    return ChangedBox(run[0].lo, hi, data, [m for b in run for m in b.members])


def select_param(lo: Sequence[int], hi: Sequence[int]) -> str:
    """HDF REST hyperslab selection ``[a:b,c:d]``."""
    return "[" + ",".join(f"{a}:{b}" for a, b in zip(lo, hi, strict=True)) + "]"
