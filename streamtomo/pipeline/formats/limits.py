"""Bounds every decoder applies before it trusts a byte of a stream message.

A detector or PandA stream is input from the network: a decoder takes any bytes and
returns a message or raises :class:`FrameError` with a reason, never another
exception and never work or memory out of proportion to the message. These are the
bounds, in one place, so all decoders draw the same lines.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from streamtomo.pipeline.formats.errors import FrameError

# A STINS or Eiger JSON part is a few hundred bytes; detector metadata a few tens of kB.
MAX_JSON_BYTES = 1 << 20
# Python's parser recurses per nesting level; real headers nest two or three deep.
MAX_JSON_DEPTH = 32
# Frame numbers, message numbers and counts: far beyond any scan, far below overflow.
MAX_COUNTER = 1 << 53
# The largest frame a decoder builds (a 2048x2048 uint16 frame is 8 MiB; 16k x 16k
# float32 is 1 GiB): the declared shape is checked against it before decompressing.
MAX_FRAME_BYTES = 1 << 30
MAX_FRAME_DIMS = 3
# A pixel type's name: "uint16", "<u2", "float32", "f4". Anything else (a shape "(2,)f4",
# a record "f4,i4", a list) never reaches np.dtype, whose parser raises TypeError,
# ValueError or SyntaxError for the strings it refuses.
_DTYPE_NAME = re.compile(r"[<>=|]?[A-Za-z]{1,10}[0-9]{0,2}")


def _reject_constant(name: str) -> Any:
    raise FrameError(f"{name} is not a finite number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 19:  # beyond int64: no counter or shape is that large
        raise FrameError(f"integer with {len(text)} digits is out of range")
    return int(text)


def _bounded_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise FrameError(f"number {text[:32]!r} is not finite")
    return value


def _depth(text: bytes) -> int:
    """Deepest bracket nesting outside strings, in one pass (the parser recurses)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def load_json(data: bytes, what: str) -> Any:
    """Parse one JSON message part within the bounds above; FrameError otherwise."""
    if len(data) > MAX_JSON_BYTES:
        raise FrameError(f"{what} is {len(data)} bytes of JSON, more than {MAX_JSON_BYTES}")
    # Count brackets only when there are enough of them to matter (the scan is Python).
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and _depth(data) > MAX_JSON_DEPTH:
        raise FrameError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(data, parse_constant=_reject_constant, parse_int=_bounded_int, parse_float=_bounded_float)
    except FrameError as error:
        raise FrameError(f"{what}: {error}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise FrameError(f"{what} is not valid JSON: {error}") from None


def json_object(data: bytes, what: str) -> dict[str, Any]:
    doc = load_json(data, what)
    if not isinstance(doc, dict):
        raise FrameError(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def counter(head: Mapping[str, Any], key: str, what: str) -> int:
    """A non-negative integer field (frame or message number) within MAX_COUNTER."""
    value = head.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FrameError(f"{what} needs integer {key!r}, got {value!r}")
    if not 0 <= value < MAX_COUNTER:
        raise FrameError(f"{what} has {key} {value}, outside 0..{MAX_COUNTER - 1}")
    return value


def frame_shape(value: Any, itemsize: int, what: str, max_bytes: int = MAX_FRAME_BYTES) -> tuple[int, ...]:
    """A declared image shape: 1 to MAX_FRAME_DIMS positive ints, within ``max_bytes``
    (a worker that knows its detector passes a tighter bound than MAX_FRAME_BYTES)."""
    if not (
        isinstance(value, list)
        and 1 <= len(value) <= MAX_FRAME_DIMS
        and all(isinstance(n, int) and not isinstance(n, bool) for n in value)
    ):
        raise FrameError(f"{what} shape must be a list of 1 to {MAX_FRAME_DIMS} ints, got {value!r}")
    if any(n < 1 for n in value):
        raise FrameError(f"{what} shape {value} needs every axis >= 1 (an image has at least 1x1 pixels)")
    nbytes = math.prod(value) * itemsize
    if nbytes > max_bytes:
        raise FrameError(f"{what} shape {value} declares {nbytes} bytes, more than the {max_bytes} allowed")
    return tuple(value)


def pixel_dtype(name: Any, kinds: str, what: str) -> np.dtype[Any]:
    """The numpy type a header names for its pixels, of one of ``kinds`` (``dtype.kind``
    letters), or :class:`FrameError`."""
    dtype = None
    if isinstance(name, str) and _DTYPE_NAME.fullmatch(name):
        try:
            dtype = np.dtype(name)
        except (TypeError, ValueError, SyntaxError, DeprecationWarning):  # the last under -W error
            dtype = None
    if dtype is None or dtype.kind not in kinds:
        raise FrameError(f"{what} has unknown data type {name!r}")
    return dtype
