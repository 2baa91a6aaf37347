"""numpy dtypes and values <-> HDF REST API JSON and binary encodings.

The one place that says how a numpy dtype is spelled in HDF REST: the in-memory
server describes its datasets with it and the HSDS writer creates its datasets with
it, so a reader sees the same type from both (they used to disagree: a type object
from one, a bare ``"H5T_IEEE_F32LE"`` string from the other).

Only what a streaming tomography domain holds is supported: little-endian ints and
floats, bool (HDF5 has no bool: h5py/h5pyd use an int8 enum FALSE/TRUE), fixed-length
byte strings ``S<n>`` and variable-length UTF-8 strings (numpy ``object`` holding
``str``; numpy ``U<n>`` is served the same way because HDF5 has no UCS-4 strings).

Binary encoding follows HSDS (``h5json.array_util.arrayToBytes``): fixed-size types
are the raw little-endian buffer in C order; each variable-length string is a
little-endian int32 byte count followed by its UTF-8 bytes.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

JsonDict = dict[str, Any]

VLEN_STR_TYPE: JsonDict = {
    "class": "H5T_STRING",
    "charSet": "H5T_CSET_UTF8",
    "strPad": "H5T_STR_NULLTERM",
    "length": "H5T_VARIABLE",
}
BOOL_TYPE: JsonDict = {
    "class": "H5T_ENUM",
    "base": {"class": "H5T_INTEGER", "base": "H5T_STD_I8LE"},
    # Both spellings: h5py/h5json write ``members`` (a list), the HDF REST spec and
    # h5web's HsdsProvider read ``mapping`` (a dict; without it h5web fails on the
    # whole group). h5json reads either, preferring ``mapping``.
    "mapping": {"FALSE": 0, "TRUE": 1},
    "members": [{"name": "FALSE", "value": 0}, {"name": "TRUE", "value": 1}],
}


class UnsupportedType(TypeError):
    """A dtype that has no HDF REST spelling here (complex, datetime, structured...)."""


def is_vlen_str(dtype: np.dtype[Any]) -> bool:
    return dtype.kind in ("O", "U")


def type_json(dtype: np.dtype[Any]) -> JsonDict:
    """HDF REST type JSON for ``dtype`` (always little-endian for numbers)."""
    kind = dtype.kind
    if kind == "b":
        return dict(BOOL_TYPE)
    if kind in ("i", "u"):
        sign = "I" if kind == "i" else "U"
        return {"class": "H5T_INTEGER", "base": f"H5T_STD_{sign}{dtype.itemsize * 8}LE"}
    if kind == "f" and dtype.itemsize in (2, 4, 8):
        return {"class": "H5T_FLOAT", "base": f"H5T_IEEE_F{dtype.itemsize * 8}LE"}
    if kind == "S":
        return {
            "class": "H5T_STRING",
            "charSet": "H5T_CSET_ASCII",
            "strPad": "H5T_STR_NULLPAD",
            "length": dtype.itemsize,
        }
    if is_vlen_str(dtype):
        return dict(VLEN_STR_TYPE)
    raise UnsupportedType(f"dtype {dtype} has no HDF REST type here")


def wire_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype stored and sent for ``dtype``: little-endian numbers, numpy bool.

    Exactly this dtype must go on the wire: HSDS stores a float64 body PUT into a
    float32 dataset as garbage and still answers 200.
    """
    kind = dtype.kind
    if is_vlen_str(dtype) or kind == "S":
        return dtype
    if kind == "b":
        return np.dtype(np.bool_)
    if kind in ("i", "u", "f") and dtype.itemsize in (1, 2, 4, 8):
        return dtype.newbyteorder("<")
    raise UnsupportedType(f"dtype {dtype} has no HDF REST type here")


def shape_json(shape: tuple[int, ...]) -> JsonDict:
    if not shape:
        return {"class": "H5S_SCALAR"}
    return {"class": "H5S_SIMPLE", "dims": list(shape), "maxdims": list(shape)}


def itemsize_estimate(dtype: np.dtype[Any]) -> int:
    """Bytes per element on the wire; a guess for variable-length strings."""
    return 64 if is_vlen_str(dtype) else dtype.itemsize


# -- JSON values --------------------------------------------------------------------
JSON_PIECE_VALUES = 1 << 10  # at least this many values per json.dumps call (per-call overhead)
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _json_scalar(value: Any, ignore_nan: bool = False) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return _json_scalar(value.item(), ignore_nan)
    if isinstance(value, float) and not math.isfinite(value):
        # json.dumps would write NaN/Infinity, which is not JSON; HSDS clients
        # (h5pyd, h5web) accept the quoted spelling. ignore_nan: null, as HSDS.
        if ignore_nan:
            return None
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def array_to_json(arr: npt.NDArray[Any], ignore_nan: bool = False) -> Any:
    """Nested lists (or a bare value for 0-d) of JSON-safe Python values; NaN and
    infinities as quoted strings, or as null with ``ignore_nan`` (HSDS)."""
    if arr.dtype.kind in ("i", "u", "b"):
        return arr.tolist()  # the fast path: already JSON-safe
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if not bad.any():
            return arr.tolist()
        # Vectorised: only the non-finite elements become other Python objects.
        out = np.array(arr, dtype=object)
        out[bad] = (
            None if ignore_nan else np.where(np.isnan(arr[bad]), "NaN", np.where(arr[bad] > 0, "Infinity", "-Infinity"))
        )
        return out.tolist()
    return _json_nested(arr.tolist(), ignore_nan)


def array_json_pieces(arr: npt.NDArray[Any], ignore_nan: bool = False) -> Iterator[str]:
    """The JSON text of :func:`array_to_json` in pieces: blocks of the smallest
    trailing axes holding ``JSON_PIECE_VALUES`` values or more, a 2-d image's rows
    (joined, the same text as one ``json.dumps``).

    Encoding a 2048 x 2048 float32 slice takes seconds of CPU with the GIL held: one
    ``json.dumps`` would stall every other thread of the process (the reducer's) for
    all of it, pieces let them run in between, and only one piece's Python floats
    exist at a time. Blocks along the leading axes are encoded whole; the brackets
    between them are written from their multi-index.
    """
    split = _split_axis(arr.shape)
    if arr.ndim == 0 or arr.size == 0 or split == 0:
        yield _dumps(array_to_json(arr, ignore_nan))
        return
    lead = arr.shape[:split]
    for n, index in enumerate(itertools.product(*(range(d) for d in lead))):
        opens = _count_trailing(index, [0] * split)
        closes = _count_trailing(index, [d - 1 for d in lead])
        text = _dumps(array_to_json(arr[index], ignore_nan))
        yield ("," if n else "") + "[" * opens + text + "]" * closes


def _split_axis(shape: tuple[int, ...]) -> int:
    """How many leading axes to iterate so that each block holds at least
    ``JSON_PIECE_VALUES`` values (fewer when the whole array does)."""
    split = len(shape)
    while split > 0 and math.prod(shape[split:]) < JSON_PIECE_VALUES:
        split -= 1
    return split


def _count_trailing(index: tuple[int, ...], edge: list[int]) -> int:
    """How many trailing coordinates of ``index`` sit on ``edge`` (brackets to open at
    the first block of an axis, or to close at its last)."""
    count = 0
    for i, e in zip(reversed(index), reversed(edge), strict=True):
        if i != e:
            break
        count += 1
    return count


def _json_nested(value: Any, ignore_nan: bool = False) -> Any:
    if isinstance(value, list):
        return [_json_nested(v, ignore_nan) for v in value]
    return _json_scalar(value, ignore_nan)


# -- binary values ------------------------------------------------------------------
def vlen_to_bytes(arr: npt.NDArray[Any]) -> bytes:
    """HSDS vlen encoding: per element an int32 LE byte count then the UTF-8 bytes."""
    parts: list[bytes] = []
    for item in arr.reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item or b"")
        parts.append(struct.pack("<i", len(data)))
        parts.append(data)
    return b"".join(parts)


# -- attributes ---------------------------------------------------------------------
def attribute_array(value: Any) -> npt.NDArray[Any]:
    """Normalise an attribute value (str, int, float, bool, list, ndarray) to an array."""
    if isinstance(value, str):
        out = np.empty((), dtype=object)
        out[()] = value
        return out
    if isinstance(value, bool):
        return np.asarray(value, dtype=bool)
    if isinstance(value, int):
        return np.asarray(value, dtype=np.int64)
    if isinstance(value, float):
        return np.asarray(value, dtype=np.float64)
    if isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value):
        # string lists (NeXus @axes = ["rotation_angle", "."]) are vlen strings
        out = np.empty((len(value),), dtype=object)
        out[:] = [str(v) for v in value]
        return out
    return np.asarray(value)


def attribute_body(value: Any) -> JsonDict:
    """What a client sends to create an attribute (``PUT .../attributes``).

    Same type JSON as :func:`attribute_json` serves; the shape is a plain list (none
    for scalars) and numbers go as plain JSON numbers, the spelling HSDS parses.
    """
    arr = attribute_array(value)
    body: JsonDict = {"type": type_json(arr.dtype)}
    if arr.ndim:
        body["shape"] = list(arr.shape)
    if is_vlen_str(arr.dtype) or arr.dtype.kind == "S":
        body["value"] = _json_nested(arr.tolist())
    else:
        body["value"] = arr.tolist()
    return body


def attribute_json(name: str, value: Any, created: float, include_data: bool = True) -> JsonDict:
    """An attribute as HSDS reports it (``type``, ``shape``, ``value``, ``created``)."""
    arr = attribute_array(value)
    out: JsonDict = {
        "name": name,
        "type": type_json(arr.dtype),
        "shape": shape_json(tuple(arr.shape)),
        "created": created,
        "lastModified": created,
    }
    if include_data:
        out["value"] = array_to_json(arr)
    return out
