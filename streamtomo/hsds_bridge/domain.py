"""An in-memory HDF5-like domain: groups, datasets backed by numpy arrays, attributes.

The reducer keeps its live state *in* a :class:`Domain`; publishers read from it:
the in-memory HDF REST server serves the arrays directly (no copies), the HSDS
writer mirrors the chunks that changed. Writers hold ``domain.lock`` while they
update; :meth:`Domain.commit` bumps the generation after a consistent update, and
records which chunks changed so that mirrors write only those.

Attributes are fixed at creation: h5pyd 1.0 cannot overwrite an attribute, so
everything that changes during a scan is a dataset.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

AttrValue = str | int | float | bool | list[str] | list[int] | list[float] | npt.NDArray[Any]
Selection = tuple[slice | int, ...]
ChunkIndex = tuple[int, ...]

STRING_DTYPE = np.dtype(object)  # variable-length UTF-8 string (scalar datasets only)


def _fit_chunks(chunks: tuple[int, ...], old: tuple[int, ...], new: tuple[int, ...]) -> tuple[int, ...]:
    """``chunks`` of a dataset of shape ``old`` carried over to shape ``new``: an axis
    chunked whole stays whole (one image per chunk stays so), others are clamped to the
    new length; never below 1 (an empty axis still has a positive chunk size)."""
    return tuple(max(1, n if c >= o > 0 else min(c, n)) for c, o, n in zip(chunks, old, new, strict=True))


def _split_path(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    for part in parts:
        if part in (".", ".."):
            raise ValueError(f"invalid path component {part!r} in {path!r}")
    return parts


class DomainDataset:
    """A dataset: a numpy array plus attributes, chunk shape and dirty-chunk set."""

    def __init__(
        self,
        path: str,
        array: npt.NDArray[Any],
        attrs: dict[str, AttrValue] | None = None,
        chunks: tuple[int, ...] | None = None,
        unwritten: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        self.path = path
        self.attrs: dict[str, AttrValue] = {} if attrs is None else attrs
        # True where the array's memory does not hold the dataset's values yet, which
        # read as zeros: a writer that reuses memory without clearing it says where
        # (broadcast to the shape; None: everything reads as it is). Readers apply it
        # with :meth:`zero_unwritten` to what they copied.
        self.unwritten = unwritten
        self._dirty: set[ChunkIndex] = set()
        self._array = array
        self.chunks: tuple[int, ...] = self._checked_chunks(array, chunks)
        self.mark_all_dirty()

    def __repr__(self) -> str:
        return f"DomainDataset({self.path!r}, shape={self.shape}, dtype={self.dtype}, chunks={self.chunks})"

    def _checked_chunks(self, array: npt.NDArray[Any], chunks: tuple[int, ...] | None) -> tuple[int, ...]:
        if chunks is None:
            chunks = tuple(array.shape) if array.ndim else ()
        chunks = tuple(int(c) for c in chunks)
        if len(chunks) != array.ndim:
            raise ValueError(f"{self.path}: chunks {chunks} do not match shape {array.shape}")
        if any(c <= 0 for c in chunks):
            raise ValueError(f"{self.path}: chunk sizes must be positive, got {chunks}")
        return chunks

    @property
    def array(self) -> npt.NDArray[Any]:
        return self._array

    @array.setter
    def array(self, array: npt.NDArray[Any]) -> None:
        """Swap the backing array (a new scan's storage); see :meth:`replace_array`."""
        self.replace_array(array)

    def replace_array(self, array: npt.NDArray[Any], chunks: tuple[int, ...] | None = None) -> None:
        """Serve ``array`` from now on, with ``chunks`` (default: the old chunks fitted
        to the new shape), every chunk marked dirty and ``unwritten`` cleared.

        Chunks must stay within the shape (larger ones are invalid HDF5, and mirrors lay
        their chunk grid out from them), and ``unwritten`` described the old memory.
        """
        if chunks is None:
            if array.ndim != self._array.ndim:
                raise ValueError(f"{self.path}: a {array.ndim}-d array needs its own chunks (was {self._array.ndim}-d)")
            chunks = _fit_chunks(self.chunks, self.shape, tuple(array.shape))
        self.chunks = self._checked_chunks(array, chunks)
        self._array = array
        self.unwritten = None
        self.mark_all_dirty()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.array.dtype

    @property
    def is_string(self) -> bool:
        return self.array.dtype == STRING_DTYPE

    def zero_unwritten(
        self, block: npt.NDArray[Any], select: Callable[[npt.NDArray[np.bool_]], npt.NDArray[np.bool_]]
    ) -> None:
        """Zero what is not written yet in ``block``, a copy a reader took of a
        selection of ``array``; ``select`` takes the same selection from an array of the
        dataset's shape (``unwritten`` broadcast to it, without a copy)."""
        if self.unwritten is not None:
            block[select(np.broadcast_to(self.unwritten, self.shape))] = 0

    def copy_selection(self, selection: Selection) -> npt.NDArray[Any]:
        """A C-ordered copy of ``array[selection]`` as readers must see it."""
        block = np.array(self.array[selection], order="C", copy=True)
        self.zero_unwritten(block, itemgetter(selection))
        return block

    def chunk_grid(self) -> tuple[int, ...]:
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunks, strict=False))

    def chunk_selection(self, index: ChunkIndex) -> tuple[slice, ...]:
        return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, self.chunks, self.shape, strict=False))

    def mark_all_dirty(self) -> None:
        self._dirty.update(itertools.product(*(range(g) for g in self.chunk_grid())))

    def mark_dirty(self, selection: Selection) -> None:
        """Record the chunks touched by ``selection`` (ints and step-1 slices)."""
        if len(selection) > self.array.ndim:
            raise IndexError(f"{self.path}: selection {selection} has too many axes")
        full = tuple(selection) + (slice(None),) * (self.array.ndim - len(selection))
        ranges = []
        for sel, n, c in zip(full, self.shape, self.chunks, strict=False):
            if isinstance(sel, slice):
                start, stop, _ = sel.indices(n)
                if stop <= start:
                    return
                ranges.append(range(start // c, (stop - 1) // c + 1))
            else:
                idx = sel + n if sel < 0 else sel
                ranges.append(range(idx // c, idx // c + 1))
        self._dirty.update(itertools.product(*ranges))

    def write(self, selection: Selection, values: Any) -> None:
        """Assign ``values`` into the array and mark the touched chunks dirty."""
        self.array[selection] = values
        self.mark_dirty(selection)

    def set_scalar(self, value: Any) -> None:
        if self.array.ndim != 0:
            raise ValueError(f"{self.path} is not a scalar dataset")
        self.array[()] = value
        self._dirty.add(())

    def take_dirty(self) -> set[ChunkIndex]:
        dirty, self._dirty = self._dirty, set()
        return dirty


@dataclass
class DomainGroup:
    path: str
    attrs: dict[str, AttrValue] = field(default_factory=dict)
    children: dict[str, DomainGroup | DomainDataset] = field(default_factory=dict)


class Domain:
    """A named tree of groups and datasets guarded by one re-entrant lock."""

    def __init__(self, name: str, root_attrs: Mapping[str, AttrValue] | None = None) -> None:
        if not name.startswith("/"):
            name = "/" + name
        self.name = name
        self.lock = threading.RLock()
        self.root = DomainGroup("/", dict(root_attrs or {}))
        self.generation = 0
        # Identity of this domain instance: mirrors recreate when it changes.
        self.created_ns = 0

    # -- building -------------------------------------------------------------------
    def _parent(self, path: str, create: bool) -> tuple[DomainGroup, str]:
        parts = _split_path(path)
        if not parts:
            raise ValueError("the root group cannot be replaced")
        group = self.root
        for i, part in enumerate(parts[:-1]):
            child = group.children.get(part)
            if child is None:
                if not create:
                    raise KeyError(path)
                child = DomainGroup("/" + "/".join(parts[: i + 1]))
                group.children[part] = child
            if not isinstance(child, DomainGroup):
                raise ValueError(f"{child.path} is a dataset, not a group")
            group = child
        return group, parts[-1]

    def create_group(self, path: str, attrs: Mapping[str, AttrValue] | None = None) -> DomainGroup:
        with self.lock:
            parent, name = self._parent(path, create=True)
            existing = parent.children.get(name)
            if isinstance(existing, DomainDataset):
                raise ValueError(f"{existing.path} is a dataset, not a group")
            group = existing or DomainGroup("/" + "/".join(_split_path(path)))
            group.attrs.update(attrs or {})
            parent.children[name] = group
            return group

    def create_dataset(
        self,
        path: str,
        data: npt.ArrayLike | None = None,
        *,
        shape: tuple[int, ...] | None = None,
        dtype: npt.DTypeLike | None = None,
        fill: Any = 0,
        attrs: Mapping[str, AttrValue] | None = None,
        chunks: tuple[int, ...] | None = None,
        share: bool = False,
    ) -> DomainDataset:
        """Create (or replace) a dataset from ``data`` or from ``shape``/``dtype``.

        ``share`` keeps ``data`` itself (a numpy array the caller updates in place
        under ``self.lock``) instead of a copy.
        """
        if share:
            if not isinstance(data, np.ndarray):
                raise TypeError(f"{path}: share needs a numpy array")
            array: npt.NDArray[Any] = data
        elif data is not None:
            if isinstance(data, str):
                array = np.empty((), dtype=STRING_DTYPE)
                array[()] = data
            else:
                array = np.array(data, dtype=dtype)
        else:
            if shape is None:
                raise ValueError(f"{path}: give data or shape")
            array = np.full(shape, fill, dtype=dtype)
        with self.lock:
            parent, name = self._parent(path, create=True)
            if isinstance(parent.children.get(name), DomainGroup):
                raise ValueError(f"{path} is a group, not a dataset")
            ds = DomainDataset("/" + "/".join(_split_path(path)), array, dict(attrs or {}), chunks)
            parent.children[name] = ds
            return ds

    # -- reading --------------------------------------------------------------------
    def get(self, path: str) -> DomainGroup | DomainDataset:
        node: DomainGroup | DomainDataset = self.root
        for part in _split_path(path):
            if not isinstance(node, DomainGroup) or part not in node.children:
                raise KeyError(path)
            node = node.children[part]
        return node

    def dataset(self, path: str) -> DomainDataset:
        node = self.get(path)
        if not isinstance(node, DomainDataset):
            raise KeyError(f"{path} is a group, not a dataset")
        return node

    def walk(self) -> Iterator[DomainGroup | DomainDataset]:
        """Every node, parents before children."""
        stack: list[DomainGroup | DomainDataset] = [self.root]
        while stack:
            node = stack.pop()
            yield node
            if isinstance(node, DomainGroup):
                stack.extend(reversed(list(node.children.values())))

    # -- consistency ----------------------------------------------------------------
    def commit(self) -> int:
        """Mark the current state consistent: bump and return the generation."""
        with self.lock:
            self.generation += 1
            return self.generation

    def take_dirty(self) -> dict[str, set[ChunkIndex]]:
        """Chunks changed since the last call, per dataset path (for mirrors)."""
        with self.lock:
            out = {}
            for node in self.walk():
                if isinstance(node, DomainDataset):
                    dirty = node.take_dirty()
                    if dirty:
                        out[node.path] = dirty
            return out
