"""Dectris Stream v1 messages (dranspose stream type ``EIGER_LEGACY``).

The detector's ZeroMQ PUSH stream ("stream v1", SIMPLON API 1.x) sends multipart
messages whose first part is JSON:

* series start: ``{"htype": "dheader-1.0", "series", "header_detail"}``; with
  ``header_detail`` ``basic`` or ``all`` a second JSON part with the detector
  configuration follows; ``all`` adds pairs of (JSON header, binary blob) for the
  flat field, pixel mask and count-rate table; an appendix JSON part may end it;
* image: ``{"htype": "dimage-1.0", "series", "frame", "hash"}``, then
  ``{"htype": "dimage_d-1.0", "shape": [x, y], "type", "encoding", "size"}``, the
  data blob, ``{"htype": "dconfig-1.0", "start_time", "stop_time", "real_time"}``
  and optionally an appendix part (user data set through ``stream/config/image_appendix``);
* series end: ``{"htype": "dseries_end-1.0", "series"}``.

Two details matter for decoding. ``shape`` is ``[x, y]`` = (width, height), so the
array is ``(shape[1], shape[0])``. ``encoding`` is ``[bs<bits>][-][lz4]<`` or ``>``:
``<`` raw little-endian, ``lz4<`` one LZ4 block (needs the ``lz4`` package),
``bs32-lz4<`` (and bs16, bs8) bitshuffle-LZ4 with the same 12-byte header as the
HDF5 filter, i.e. exactly what :func:`streamtomo.pipeline.formats.stins.bslz4_decompress` reads.

Decoding returns the STINS message types (:class:`StinsHeader`, :class:`StinsImage`,
:class:`StinsEnd`), so a worker handles both detectors with one code path. The
image appendix, when it is a JSON object, is merged into ``StinsImage.extra``: an
``image_key`` there gives the frame's kind as in STINS image headers.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.formats.errors import FrameError, UnknownMessage
from streamtomo.pipeline.formats.limits import (
    MAX_FRAME_BYTES,
    counter,
    frame_shape,
    json_object,
    load_json,
    pixel_dtype,
)
from streamtomo.pipeline.formats.stins import (
    Part,
    StinsEnd,
    StinsHeader,
    StinsImage,
    StinsMessage,
    as_buffer,
    bslz4_compress,
    bslz4_decompress,
    native_order,
)

STREAM_TYPE = "EIGER_LEGACY"
HEADER, IMAGE, IMAGE_DATA, IMAGE_CONFIG, END = (
    "dheader-1.0",
    "dimage-1.0",
    "dimage_d-1.0",
    "dconfig-1.0",
    "dseries_end-1.0",
)
_ENCODING_RE = re.compile(r"^(?:bs(?P<bits>8|16|32|64))?-?(?P<lz4>lz4)?(?P<order>[<>])$")


def _json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc).encode()


# -- encoding -------------------------------------------------------------------------


def encode_header(
    series: int, config: Mapping[str, Any] | None = None, appendix: Mapping[str, Any] | None = None
) -> list[bytes]:
    """Series start with ``header_detail`` ``basic`` (config part) or ``none``."""
    detail = "none" if config is None else "basic"
    parts = [_json({"htype": HEADER, "series": series, "header_detail": detail})]
    if config is not None:
        parts.append(_json(config))
    if appendix is not None:
        parts.append(_json(appendix))
    return parts


def encoding_name(array: npt.NDArray[Any], compression: str) -> str:
    """Dectris encoding string for ``compression`` 'none' or 'bslz4'."""
    if compression == "none":
        return "<"
    if compression == "bslz4":
        return f"bs{array.dtype.itemsize * 8}-lz4<"
    raise ValueError(f"unknown compression {compression!r}; allowed: 'none', 'bslz4'")


def encode_image(
    series: int,
    frame: int,
    array: npt.ArrayLike,
    compression: str = "bslz4",
    appendix: Mapping[str, Any] | None = None,
    start_time_ns: int = 0,
    real_time_ns: int = 10_000_000,
) -> list[bytes]:
    """One image message (4 parts, 5 with an appendix); data little-endian."""
    arr = np.asarray(array)
    if arr.ndim != 2 or arr.dtype.kind not in "uif":
        raise ValueError(f"need a 2-D integer or float image, got {arr.dtype} {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    encoding = encoding_name(arr, compression)
    blob = arr.tobytes() if compression == "none" else bslz4_compress(arr)
    rows, cols = arr.shape
    parts = [
        _json({"htype": IMAGE, "series": series, "frame": int(frame), "hash": hashlib.md5(blob).hexdigest()}),
        _json(
            {
                "htype": IMAGE_DATA,
                "shape": [cols, rows],
                "type": arr.dtype.name,
                "encoding": encoding,
                "size": len(blob),
            }
        ),
        blob,
        _json(
            {
                "htype": IMAGE_CONFIG,
                "start_time": start_time_ns,
                "stop_time": start_time_ns + real_time_ns,
                "real_time": real_time_ns,
            }
        ),
    ]
    if appendix is not None:
        parts.append(_json(appendix))
    return parts


def encode_series_end(series: int) -> list[bytes]:
    return [_json({"htype": END, "series": series})]


# -- decoding -------------------------------------------------------------------------


def _json_part(part: Part, what: str) -> Any:
    return load_json(bytes(as_buffer(part)), f"Eiger {what}")


def _object(part: Part, what: str) -> dict[str, Any]:
    return json_object(bytes(as_buffer(part)), f"Eiger {what}")


def _int(head: Mapping[str, Any], key: str, what: str) -> int:
    return counter(head, key, f"Eiger {what}")


def _image_shape(info: Mapping[str, Any], itemsize: int, max_bytes: int) -> tuple[int, int]:
    shape = info.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2):
        raise FrameError(f"Eiger image shape must be [x, y], got {shape!r}")
    x, y = frame_shape(shape, itemsize, "Eiger image", max_bytes)
    return y, x  # [x, y] -> (rows, cols)


def _dtype(name: Any, order: Literal["<", ">"]) -> np.dtype[Any]:
    return pixel_dtype(name, "uif", "Eiger image").newbyteorder(order)


def decode_image_data(info: Mapping[str, Any], blob: Part, max_bytes: int = MAX_FRAME_BYTES) -> npt.NDArray[Any]:
    """The image array from the ``dimage_d-1.0`` part and the data blob."""
    encoding = info.get("encoding")
    match = _ENCODING_RE.match(encoding) if isinstance(encoding, str) else None
    if match is None:
        raise FrameError(f"Eiger image has unknown encoding {encoding!r}")
    dtype = _dtype(info.get("type"), cast(Literal["<", ">"], match["order"]))
    shape = _image_shape(info, dtype.itemsize, max_bytes)
    data = as_buffer(blob)
    size = info.get("size")
    if isinstance(size, int) and not isinstance(size, bool) and size != data.nbytes:
        raise FrameError(f"Eiger image data is {data.nbytes} bytes, its header says {size} (truncated?)")
    expected = math.prod(shape) * dtype.itemsize
    if match["bits"]:
        if int(match["bits"]) != dtype.itemsize * 8:
            raise FrameError(f"Eiger encoding {encoding} does not fit data type {dtype.name}")
        return bslz4_decompress(data, shape, dtype)
    if match["lz4"]:
        try:
            import lz4.block  # optional: only plain-LZ4 streams need it
        except ImportError:
            raise FrameError("Eiger 'lz4' encoding needs the lz4 package (pip install lz4)") from None
        try:
            raw = lz4.block.decompress(struct.pack("<I", expected) + bytes(data))
        except Exception as exc:  # lz4 raises its own LZ4BlockError
            raise FrameError(f"corrupt Eiger lz4 data: {exc}") from None
        return native_order(np.frombuffer(raw, dtype=dtype).reshape(shape))
    if data.nbytes != expected:
        raise FrameError(
            f"Eiger image has {data.nbytes} data bytes, shape {list(shape)} of {dtype.name} needs {expected}"
        )
    # ">" data swapped into the machine's order, as STINS images are (stins.native_order).
    return native_order(np.frombuffer(data, dtype=dtype).reshape(shape))


def _decode_image(head: dict[str, Any], parts: Sequence[Part], max_bytes: int) -> StinsImage:
    frame = _int(head, "frame", "image")
    if len(parts) < 3:
        raise FrameError(f"Eiger image {frame} has {len(parts)} parts, needs at least 3")
    info = _object(parts[1], f"image {frame} data header")
    if info.get("htype") != IMAGE_DATA:
        raise FrameError(f"Eiger image {frame}: second part is {info.get('htype')!r}, expected {IMAGE_DATA!r}")
    array = decode_image_data(info, parts[2], max_bytes)
    extra: dict[str, Any] = {"series": head.get("series")}
    if len(parts) > 3:
        config = _object(parts[3], f"image {frame} config")
        extra.update({k: v for k, v in config.items() if k != "htype"})
    if len(parts) > 4:
        appendix = _json_part(parts[4], f"image {frame} appendix")
        if isinstance(appendix, dict):
            extra.update(appendix)
    compression = "none" if info.get("encoding") in ("<", ">") else str(info.get("encoding"))
    # Eiger messages are not numbered: the frame's place in the series stands in.
    return StinsImage(frame + 1, frame, array, compression, extra)


def decode_eiger_legacy(parts: Sequence[Part], max_frame_bytes: int = MAX_FRAME_BYTES) -> StinsMessage:
    """Decode one Dectris Stream v1 multipart message (``event.streams[name].frames``)."""
    if len(parts) == 0:
        raise FrameError("Eiger message has no parts")
    head = _object(parts[0], "header part")
    htype = head.get("htype")
    if htype == IMAGE:
        return _decode_image(head, parts, max_frame_bytes)
    if htype == HEADER:
        meta: list[dict[str, Any]] = []
        for i, part in enumerate(parts[1:], 1):
            # JSON parts (config, table headers, appendix); binary tables are skipped.
            try:
                doc = load_json(bytes(as_buffer(part)), f"Eiger header part {i}")
            except FrameError:
                continue
            if not isinstance(doc, dict):
                raise FrameError(f"Eiger header part {i} must be a JSON object, got {type(doc).__name__}")
            meta.append(doc)
        extra = {k: v for k, v in head.items() if k != "htype"}
        return StinsHeader(0, "", extra, tuple(meta))
    if htype == END:
        return StinsEnd(0, {k: v for k, v in head.items() if k != "htype"})
    error = UnknownMessage if isinstance(htype, str) and htype else FrameError  # no htype: a damaged message
    raise error(f"unknown Eiger htype {htype!r}; expected {HEADER!r}, {IMAGE!r} or {END!r}")
