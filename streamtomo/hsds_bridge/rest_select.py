"""Parse HDF REST selections and extract them from numpy arrays without whole copies.

Three forms reach ``/datasets/{id}/value``:

* ``select=[a:b:c, i, [1,4,7], :]`` query strings (h5pyd hyperslabs; h5pyd "fancy"
  selections put one coordinate list, or several paired lists of equal length, into
  the brackets; h5web sends bare indices). A bare index ``i`` means ``i:i+1`` and keeps
  its axis, as in HSDS; binary clients only see bytes, JSON clients get that shape.
* ``points`` (POST, JSON list or raw little-endian uint64 ``n x rank``): h5pyd's
  point selection (``dset[[1, 2], [3, 4]]`` or ``dset[[1, 5, 9]]``).

:func:`extract` slices a *view* first and copies only the selected elements
(``np.array(view, copy=True)`` / ``np.take``), so a slab of a large array costs one slab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

DimSelection = slice | npt.NDArray[np.intp]


class SelectionError(ValueError):
    """A malformed or out-of-range selection (answered with HTTP 400)."""


@dataclass(frozen=True)
class Hyperslab:
    """Per-axis normalised slices (step > 0, within bounds) or coordinate arrays."""

    dims: tuple[DimSelection, ...]

    @property
    def list_axes(self) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.dims) if not isinstance(d, slice))

    @property
    def shape(self) -> tuple[int, ...]:
        """Response shape: slice counts; the paired coordinate lists count once."""
        out: list[int] = []
        seen_list = False
        for d in self.dims:
            if isinstance(d, slice):
                out.append(len(range(d.start, d.stop, d.step)))
            elif not seen_list:
                out.append(len(d))
                seen_list = True
        return tuple(out)


@dataclass(frozen=True)
class Points:
    """Point coordinates, shape ``(n, rank)``."""

    coords: npt.NDArray[np.intp]

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.coords.shape[0]),)


Selection = Hyperslab | Points


def selection_size(sel: Selection) -> int:
    return math.prod(sel.shape)


# -- parsing ----------------------------------------------------------------------
def _split_dims(text: str) -> list[str]:
    """Split ``[a:b, [1,2], 3]`` at top-level commas."""
    body = text.strip()
    if len(body) < 2 or body[0] != "[" or body[-1] != "]":
        raise SelectionError(f"select must look like [start:stop:step,...], got {text!r}")
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in body[1:-1]:
        if ch == "[":
            depth += 1
            if depth > 1:
                raise SelectionError(f"nested brackets in select {text!r}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise SelectionError(f"unbalanced brackets in select {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise SelectionError(f"unbalanced brackets in select {text!r}")
    parts.append("".join(current).strip())
    return parts


def _parse_int(token: str, what: str, axis: int) -> int:
    try:
        return int(token)
    except ValueError:
        raise SelectionError(f"select axis {axis}: {what} {token!r} is not an integer") from None


def _parse_slice(token: str, extent: int, axis: int) -> slice:
    fields = token.split(":")
    if len(fields) > 3:
        raise SelectionError(f"select axis {axis}: {token!r} has more than start:stop:step")
    start = _parse_int(fields[0], "start", axis) if fields[0].strip() else 0
    stop = _parse_int(fields[1], "stop", axis) if fields[1].strip() else extent
    step = _parse_int(fields[2], "step", axis) if len(fields) == 3 and fields[2].strip() else 1
    if step <= 0:
        raise SelectionError(f"select axis {axis}: step must be positive, got {step}")
    if start < 0 or stop < 0:
        raise SelectionError(f"select axis {axis}: negative bounds in {token!r}")
    if start >= extent and not (start == stop == extent):
        raise SelectionError(f"select axis {axis}: start {start} out of range 0..{extent - 1}")
    if stop < start:
        raise SelectionError(f"select axis {axis}: stop {stop} is before start {start}")
    # Like h5py (and h5pyd's own shape computation) an overlong stop is clamped.
    return slice(start, min(stop, extent), step)


def _parse_index(token: str, extent: int, axis: int) -> slice:
    index = _parse_int(token, "index", axis)
    if not 0 <= index < extent:
        raise SelectionError(f"select axis {axis}: index {index} out of range 0..{extent - 1}")
    return slice(index, index + 1, 1)


def _parse_list(token: str, extent: int, axis: int) -> npt.NDArray[np.intp]:
    items = [t.strip() for t in token[1:-1].split(",") if t.strip()]
    try:
        coords = np.array([_parse_int(t, "coordinate", axis) for t in items], dtype=np.intp)
    except OverflowError:  # beyond intp (either sign): far outside any extent
        raise SelectionError(f"select axis {axis}: coordinate out of range 0..{extent - 1}") from None
    if coords.size and (coords.min() < 0 or coords.max() >= extent):
        raise SelectionError(f"select axis {axis}: coordinate out of range 0..{extent - 1}")
    return coords


def parse_select(text: str | None, shape: tuple[int, ...]) -> Hyperslab:
    """Parse a ``select`` string for an array of ``shape`` (None/empty: everything)."""
    if text is None or not text.strip() or text.strip() == "[...]":
        return Hyperslab(tuple(slice(0, n, 1) for n in shape))
    if not shape:
        raise SelectionError("select is not allowed on a scalar dataset")
    tokens = _split_dims(text)
    if len(tokens) != len(shape):
        raise SelectionError(f"select has {len(tokens)} axes but the dataset has rank {len(shape)}")
    dims: list[DimSelection] = []
    for axis, (token, extent) in enumerate(zip(tokens, shape, strict=True)):
        if not token:
            raise SelectionError(f"select axis {axis} is empty")
        if token.startswith("["):
            dims.append(_parse_list(token, extent, axis))
        elif ":" in token:
            dims.append(_parse_slice(token, extent, axis))
        else:
            dims.append(_parse_index(token, extent, axis))
    lengths = {len(d) for d in dims if not isinstance(d, slice)}
    if len(lengths) > 1:
        raise SelectionError("coordinate lists in select must all have the same length")
    return Hyperslab(tuple(dims))


def parse_points(raw: Any, shape: tuple[int, ...]) -> Points:
    """Points from a JSON list or from little-endian uint64 bytes."""
    if not shape:
        raise SelectionError("point selection is not allowed on a scalar dataset")
    rank = len(shape)
    if isinstance(raw, (bytes, bytearray, memoryview)):
        if len(raw) % 8:
            raise SelectionError(f"binary points body of {len(raw)} bytes is not uint64")
        flat = np.frombuffer(raw, dtype="<u8")
        if flat.size % rank:
            raise SelectionError(f"{flat.size} point values do not fit rank {rank}")
        if flat.size and flat.max() >= np.iinfo(np.intp).max:
            raise SelectionError("point coordinate out of range")
        coords = flat.astype(np.intp).reshape(-1, rank)
    else:
        try:
            # JSON integers only: asarray(dtype=intp) made 0.7 a 0, "1" a 1 and true a 1.
            leaves = np.asarray(raw, dtype=object).ravel()
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in leaves):
                raise TypeError
            coords = np.asarray(raw, dtype=np.intp)
        except (TypeError, ValueError, OverflowError):
            raise SelectionError("points must be a list of integer coordinates") from None
        if coords.ndim == 1 and (rank == 1 or coords.size == 0):
            # [1, 5, 9] on a rank-1 dataset; [] is no point at all, as an empty binary
            # body is (HSDS answers an empty JSON point list with an empty value too).
            coords = coords.reshape(-1, rank)
        if coords.ndim != 2 or coords.shape[1] != rank:
            raise SelectionError(f"points must be a list of {rank}-element coordinates")
    if coords.size and ((coords < 0).any() or (coords >= np.asarray(shape)).any()):
        raise SelectionError(f"point coordinate out of range for shape {list(shape)}")
    return Points(coords)


# -- extraction -------------------------------------------------------------------
def _extract_hyperslab(array: npt.NDArray[Any], sel: Hyperslab) -> npt.NDArray[Any]:
    basic = tuple(d if isinstance(d, slice) else slice(None) for d in sel.dims)
    view = array[basic]  # a view: nothing is copied yet
    axes = sel.list_axes
    if not axes:
        # np.ascontiguousarray would hand back the live view itself when it is
        # already contiguous; the copy must be taken now, under the lock.
        return np.array(view, order="C", copy=True)
    if len(axes) == 1:
        index = sel.dims[axes[0]]
        assert not isinstance(index, slice)
        return np.ascontiguousarray(np.take(view, index, axis=axes[0]))
    # Paired coordinate lists: move those axes next to the first one so numpy puts
    # the point axis where the first list was (what h5pyd's mshape expects).
    first = axes[0]
    moved = np.moveaxis(view, axes, range(first, first + len(axes)))
    lead: tuple[slice, ...] = (slice(None),) * first
    picked = moved[(*lead, *(sel.dims[a] for a in axes))]
    return np.ascontiguousarray(picked)


def extract(array: npt.NDArray[Any], sel: Selection) -> npt.NDArray[Any]:
    """A contiguous copy of just the selected elements, shaped ``sel.shape``."""
    if array.ndim == 0:
        return np.array(array, copy=True)
    if isinstance(sel, Points):
        return np.ascontiguousarray(array[tuple(sel.coords.T)])
    return _extract_hyperslab(array, sel).reshape(sel.shape)
