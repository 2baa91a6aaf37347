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

import math
import struct
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
def _json_scalar(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return _json_scalar(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        # json.dumps would write NaN/Infinity, which is not JSON; HSDS clients
        # (h5pyd, h5web) accept the quoted spelling.
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def array_to_json(arr: npt.NDArray[Any]) -> Any:
    """Nested lists (or a bare value for 0-d) of JSON-safe Python values."""
    if arr.dtype.kind in ("i", "u", "b") or (arr.dtype.kind == "f" and np.isfinite(arr).all()):
        return arr.tolist()  # the fast path: already JSON-safe
    return _json_nested(arr.tolist())


def _json_nested(value: Any) -> Any:
    if isinstance(value, list):
        return [_json_nested(v) for v in value]
    return _json_scalar(value)


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
