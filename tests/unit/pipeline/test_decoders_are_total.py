"""Every stream decoder is total: any bytes in, a message or a FrameError out.

Hypothesis builds messages that are nearly right (the real keys with hostile values,
real compressed data with flipped bytes) as well as plain junk, because a decoder's
weak spots are behind its first checks. A decoder that raised anything else would
abort a replay or lose a worker's frame without a reason.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamtomo.pipeline.formats import eiger, pcap, stins
from streamtomo.pipeline.formats.errors import FrameError

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_HUGE_INTS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([-1, 0, 1, 2**31, 2**32, 2**53, 2**63, -(2**63), 10**30]),
)
_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        _HUGE_INTS,
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8,
)
_SHAPES = st.one_of(
    st.lists(st.integers(-3, 70_000), min_size=0, max_size=4),
    st.lists(_HUGE_INTS, min_size=1, max_size=3),
    _VALUES,
)
_DTYPES = st.sampled_from(
    [
        *("uint16", "uint8", "float32", "int64", "complex64", "object", "mono12p", "<u2", ">f4", ""),
        # numpy's parser refuses these with ValueError and SyntaxError, not TypeError;
        # "a" is deprecated (a warning, an error under -W error)
        *("(-1,)f4", "(2,)(3,)f4", "(1e400,)f4", "(,)f4", "f4,i4", "a"),
    ]
)


def _json(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


def _mutated(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for position, value in flips:
        if buf:
            buf[position % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


def _total(decode: Any, parts: list[bytes]) -> None:
    with contextlib.suppress(FrameError):
        decode(parts)


@FAST
@given(
    htype=st.sampled_from(["image", "header", "series_end", "other"]),
    fields=st.fixed_dictionaries(
        {},
        optional={
            "frame": _HUGE_INTS | _VALUES,
            "msg_number": _HUGE_INTS | _VALUES,
            "shape": _SHAPES,
            "type": _DTYPES | _VALUES,
            "compression": st.sampled_from(["none", "bslz4", "lz4"]) | _VALUES,
            "filename": st.text(max_size=5) | _VALUES,
            "image_key": _VALUES,
        },
    ),
    data=st.binary(max_size=300),
    more=st.lists(st.binary(max_size=40), max_size=2),
)
def test_stins_decoder_is_total(htype: str, fields: dict[str, Any], data: bytes, more: list[bytes]) -> None:
    _total(stins.decode_stins, [_json({"htype": htype, **fields}), data, *more])


@FAST
@given(
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    cut=st.none() | st.integers(0, 2000),
    declared=st.none() | st.lists(st.integers(-2, 100), min_size=2, max_size=2),
)
def test_stins_bslz4_with_damaged_data_is_total(
    shape: tuple[int, int], flips: list[tuple[int, int]], cut: int | None, declared: list[int] | None
) -> None:
    array = np.arange(shape[0] * shape[1], dtype=np.uint16).reshape(shape)
    head, body = stins.encode_image(1, 0, array, "bslz4")
    if declared is not None:
        doc = json.loads(head)
        doc["shape"] = declared
        head = _json(doc)
    _total(stins.decode_stins, [head, _mutated(body, flips, cut)])


@FAST
@given(junk=st.lists(st.binary(max_size=200), min_size=0, max_size=4))
def test_stins_and_eiger_decoders_take_junk(junk: list[bytes]) -> None:
    _total(stins.decode_stins, junk)
    _total(eiger.decode_eiger_legacy, junk)


@FAST
@given(
    frame=_HUGE_INTS | _VALUES,
    info=st.fixed_dictionaries(
        {"htype": st.just(eiger.IMAGE_DATA)},
        optional={
            "shape": _SHAPES,
            "type": _DTYPES | _VALUES,
            "encoding": st.sampled_from(["<", ">", "bs16-lz4<", "lz4<", "bs32-lz4>", "x"]) | _VALUES,
            "size": _HUGE_INTS | _VALUES,
        },
    ),
    blob=st.binary(max_size=300),
    extra=st.lists(st.binary(max_size=40) | _VALUES.map(_json), max_size=2),
)
def test_eiger_decoder_is_total(frame: Any, info: dict[str, Any], blob: bytes, extra: list[bytes]) -> None:
    head = _json({"htype": eiger.IMAGE, "series": 1, "frame": frame})
    _total(eiger.decode_eiger_legacy, [head, _json(info), blob, *extra])


_PCAP_TOKENS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["END", "arm_time:", "fields:", "double", "Mean", "scale:", "nan", "-", "1e999", "9" * 5000]),
    st.text(max_size=6),
)


@FAST
@given(
    lines=st.lists(st.lists(_PCAP_TOKENS, max_size=6).map(" ".join), min_size=1, max_size=8),
    with_header=st.booleans(),
)
def test_pcap_decoder_is_total(lines: list[str], with_header: bool) -> None:
    header = None
    if with_header:
        fields = [
            pcap.PcapField("INENC1.VAL", "double", "Mean", 1.0),
            pcap.PcapField("PCAP.TS_TRIG", "double", "Value"),
        ]
        header = pcap.decode_pcap_event([pcap.encode_pcap_header(fields)])
        assert isinstance(header, pcap.PcapHeader)
    for text in ("\n".join(lines) + "\n", " " + lines[0] + "\n", "END " + lines[0]):
        with contextlib.suppress(FrameError):
            pcap.decode_pcap_event([text.encode("utf-8", "surrogatepass")], header)
