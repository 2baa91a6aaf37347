"""MAX IV streaming-receiver messages (dranspose stream type ``STINS``).

Each message is one multipart ZeroMQ message whose first part is a JSON header:

* ``{"htype": "header", "msg_number", "filename", ...}`` optionally followed by JSON
  parts with detector metadata;
* ``{"htype": "image", "msg_number", "frame", "shape", "type", "compression", ...}``
  followed by exactly one data part;
* ``{"htype": "series_end", "msg_number"}``.

An image's ``type`` is a numpy type name; its data is little-endian unless the name
declares an order (``">u2"``). Decoded arrays are in the machine's byte order.

``compression == "bslz4"`` data parts are HDF5 bitshuffle-filter chunks (filter 32008):
an 8-byte big-endian uncompressed byte count, a 4-byte big-endian block size in bytes,
then per block a 4-byte big-endian length and the LZ4 data. That is what the receiver
forwards from an Eiger unchanged, what its file writer stores with
``write_direct_chunk`` and what MAX IV consumers strip (``parts[1][12:]``) before
``bitshuffle.decompress_lz4``.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.formats.errors import FrameError, UnknownMessage
from streamtomo.pipeline.formats.limits import MAX_FRAME_BYTES, counter, frame_shape, json_object, pixel_dtype

STREAM_TYPE = "STINS"
COMPRESSIONS = ("none", "bslz4")

_BSLZ4_HEADER = struct.Struct(">QI")
_BLOCK_LEN = struct.Struct(">I")
_TARGET_BLOCK_BYTES = 8192  # bitshuffle's default block target (bshuf_default_block_size)
_RESERVED = frozenset({"htype", "msg_number", "frame", "shape", "type", "compression"})
# numpy's byte-order prefixes ("|": not applicable, for one-byte types, has no order to keep).
_DECLARED_ORDER = ("<", ">", "=")


class FrameLike(Protocol):
    """A ``zmq.Frame``: anything with ``.bytes`` (``.buffer`` is used when present)."""

    @property
    def bytes(self) -> bytes: ...


Part: TypeAlias = bytes | bytearray | memoryview | FrameLike


@dataclass(frozen=True)
class StinsHeader:
    msg_number: int
    filename: str
    extra: dict[str, Any] = field(default_factory=dict)
    meta: tuple[dict[str, Any], ...] = ()  # further JSON parts (detector metadata)


@dataclass(frozen=True)
class StinsImage:
    """One image; ``array`` is in the machine's byte order, a read-only view of the data
    part when uncompressed and sent in that order (a copy when it had to be swapped)."""

    msg_number: int
    frame: int
    array: npt.NDArray[Any]
    compression: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StinsEnd:
    msg_number: int
    extra: dict[str, Any] = field(default_factory=dict)


StinsMessage: TypeAlias = StinsHeader | StinsImage | StinsEnd


# -- encoding -------------------------------------------------------------------------


def _json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def encode_header(msg_number: int, filename: str, meta: Mapping[str, Any] | None = None, **extra: Any) -> list[bytes]:
    """Series start; ``meta`` becomes a second JSON part as the receiver sends it."""
    parts = [_json({"htype": "header", "filename": filename, **extra, "msg_number": msg_number})]
    if meta is not None:
        parts.append(_json(meta))
    return parts


def encode_image(
    msg_number: int,
    frame: int,
    array: npt.ArrayLike,
    compression: str = "none",
    **extra: Any,
) -> list[bytes]:
    """One image message: JSON part and data part (little-endian, C order)."""
    clash = _RESERVED.intersection(extra)
    if clash:
        raise ValueError(f"extra header keys {sorted(clash)} are reserved")
    arr = np.asarray(array)
    if arr.dtype.kind not in "uifc":
        raise ValueError(f"cannot stream dtype {arr.dtype}; use integer or float data")
    # STINS data is little-endian; a big-endian input must be swapped, not relabelled.
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    if compression == "none":
        data = arr.tobytes()
    elif compression == "bslz4":
        data = bslz4_compress(arr)
    else:
        raise ValueError(f"unknown compression {compression!r}; allowed: {COMPRESSIONS}")
    head = {
        "htype": "image",
        "frame": int(frame),
        "shape": list(arr.shape),
        "type": arr.dtype.name,
        "compression": compression,
        **extra,
        "msg_number": msg_number,
    }
    return [_json(head), data]


def encode_series_end(msg_number: int, **extra: Any) -> list[bytes]:
    return [_json({"htype": "series_end", **extra, "msg_number": msg_number})]


def bslz4_compress(arr: npt.NDArray[Any]) -> bytes:
    """Bitshuffle-LZ4 with the 12-byte HDF5-filter header (see module docstring)."""
    import bitshuffle  # optional: only bslz4 needs it

    arr = np.ascontiguousarray(arr)
    block = max(_TARGET_BLOCK_BYTES // arr.itemsize // 8 * 8, 128)
    body: npt.NDArray[np.uint8] = bitshuffle.compress_lz4(arr, block)
    return _BSLZ4_HEADER.pack(arr.nbytes, block * arr.itemsize) + body.tobytes()


# -- decoding -------------------------------------------------------------------------


def as_buffer(part: Part) -> memoryview:
    """A zero-copy view of one message part."""
    if isinstance(part, (bytes, bytearray, memoryview)):
        return memoryview(part)
    buf = getattr(part, "buffer", None)  # zmq.Frame: zero-copy view
    if isinstance(buf, memoryview):
        return buf
    return memoryview(part.bytes)


def _json_part(part: Part, what: str) -> dict[str, Any]:
    return json_object(bytes(as_buffer(part)), f"STINS {what}")


def _int_field(head: Mapping[str, Any], key: str) -> int:
    return counter(head, key, f"STINS {head.get('htype')} header")


def _dtype(name: Any) -> np.dtype[Any]:
    """The pixel type the header names, in the byte order of the data part.

    A name without an order ("uint16", "u2") is little-endian: that is what the
    Dectris and Orca STINS streams send, whatever machine decodes them. An order the
    header declares (">u2", "<f4", "=u2": numpy's prefixes) is the data's own; taking
    ">u2" as little-endian would decode every pixel byte-swapped, silently.
    """
    dtype = pixel_dtype(name, "uifc", "STINS image")  # a FrameError unless a type's name
    declared = isinstance(name, str) and name.startswith(_DECLARED_ORDER)
    return dtype if declared else dtype.newbyteorder("<")


def native_order(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``array`` in the machine's byte order (itself when it is already).

    The worker's numba kernels refuse non-native arrays, and the frame's dtype names
    the detector (``DetectorInfo``): ">u2" would not match the "uint16" of frames
    sent little-endian, nor take the uint16 table path of the corrector.
    """
    if array.dtype.isnative:
        return array
    return array.astype(array.dtype.newbyteorder("="))


def bslz4_decompress(data: memoryview | bytes, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """Inverse of :func:`bslz4_compress`; checks the block layout before the C code runs.

    bitshuffle's decoder is not told the input length, so a truncated blob could make
    it read past the buffer: walk the block lengths first.
    """
    import bitshuffle

    buf = memoryview(data).cast("B")
    if len(buf) < _BSLZ4_HEADER.size:
        raise FrameError(f"bslz4 data is {len(buf)} bytes, shorter than its 12-byte header")
    nbytes, block_bytes = _BSLZ4_HEADER.unpack_from(buf)
    expected = math.prod(shape) * dtype.itemsize
    if nbytes != expected:
        raise FrameError(
            f"bslz4 header says {nbytes} bytes uncompressed, shape {list(shape)} of {dtype.name} needs {expected}"
        )
    block = block_bytes // dtype.itemsize
    if block <= 0 or block % 8 or block_bytes % dtype.itemsize:
        raise FrameError(f"bslz4 block size {block_bytes} bytes is invalid for {dtype.name}")
    n_elem = math.prod(shape)
    n_blocks = n_elem // block + (1 if (n_elem % block) // 8 else 0)
    offset = _BSLZ4_HEADER.size
    for _ in range(n_blocks):
        if offset + 4 > len(buf):
            raise FrameError("bslz4 data is truncated (block length missing)")
        offset += 4 + _BLOCK_LEN.unpack_from(buf, offset)[0]
    offset += (n_elem % 8) * dtype.itemsize  # trailing elements are stored raw
    if offset != len(buf):
        raise FrameError(f"corrupt bslz4 data: blocks span {offset} bytes, got {len(buf)}")
    body = np.frombuffer(buf, dtype=np.uint8, offset=_BSLZ4_HEADER.size)
    try:
        out: npt.NDArray[Any] = bitshuffle.decompress_lz4(body, shape, dtype, block)
    except (RuntimeError, ValueError, OverflowError) as exc:
        raise FrameError(f"corrupt bslz4 data: {exc}") from None
    # Bitshuffle moves bits within each element's bytes as they are stored, so the
    # data comes out in the order it went in (``dtype``'s); the caller wants native.
    return native_order(out)


def _decode_image(head: dict[str, Any], parts: Sequence[Part], max_bytes: int) -> StinsImage:
    msg_number = _int_field(head, "msg_number")
    frame = _int_field(head, "frame")
    dtype = _dtype(head.get("type"))
    shape = frame_shape(head.get("shape"), dtype.itemsize, f"STINS image {frame}", max_bytes)
    compression = head.get("compression")
    if len(parts) != 2:
        raise FrameError(f"STINS image {frame} needs 1 data part after the header, got {len(parts) - 1}")
    data = as_buffer(parts[1])
    if compression == "none":
        expected = math.prod(shape) * dtype.itemsize
        if data.nbytes != expected:
            raise FrameError(
                f"STINS image {frame} has {data.nbytes} data bytes, shape {list(shape)} of "
                f"{dtype.name} needs {expected}"
            )
        # A zero-copy view when the data is in the machine's order, else a swapped copy.
        array = native_order(np.frombuffer(data, dtype=dtype).reshape(shape))
    elif compression == "bslz4":
        array = bslz4_decompress(data, shape, dtype)
    else:
        raise FrameError(f"STINS image {frame} has unknown compression {compression!r}")
    extra = {k: v for k, v in head.items() if k not in _RESERVED}
    return StinsImage(msg_number, frame, array, str(compression), extra)


def decode_stins(parts: Sequence[Part], max_frame_bytes: int = MAX_FRAME_BYTES) -> StinsMessage:
    """Decode one STINS multipart message (e.g. ``event.streams[name].frames``).

    ``max_frame_bytes`` bounds the declared image size, checked before decompressing.
    """
    if len(parts) == 0:
        raise FrameError("STINS message has no parts")
    head = _json_part(parts[0], "header part")
    htype = head.get("htype")
    if htype == "image":
        return _decode_image(head, parts, max_frame_bytes)
    if htype == "header":
        filename = head.get("filename")
        if not isinstance(filename, str):
            raise FrameError(f"STINS header needs a string 'filename', got {filename!r}")
        meta = tuple(_json_part(p, f"header part {i}") for i, p in enumerate(parts[1:], 1))
        extra = {k: v for k, v in head.items() if k not in {"htype", "msg_number", "filename"}}
        return StinsHeader(_int_field(head, "msg_number"), filename, extra, meta)
    if htype == "series_end":
        extra = {k: v for k, v in head.items() if k not in {"htype", "msg_number"}}
        return StinsEnd(_int_field(head, "msg_number"), extra)
    error = UnknownMessage if isinstance(htype, str) and htype else FrameError  # no htype: a damaged message
    raise error(f"unknown STINS htype {htype!r}; expected 'header', 'image' or 'series_end'")
