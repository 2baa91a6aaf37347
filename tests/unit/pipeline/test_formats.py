"""STINS and PCAP_RAW codecs, frame-kind rules: round trips, bad input, real data."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamtomo.pipeline.formats import pcap, pcap_checks, stins
from streamtomo.pipeline.formats.errors import EncoderWrapped, FrameError
from streamtomo.pipeline.formats.kinds import FrameKindRule
from streamtomo.pipeline.scan import ImageKey

# -- STINS ----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "bslz4"])
@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((10, 10), "uint16"), ((3, 37, 129), "uint32"), ((64, 200), "float32"), ((5,), "int16")],
)
def test_image_round_trip(compression: str, shape: tuple[int, ...], dtype: str) -> None:
    rng = np.random.default_rng(1)
    array = (rng.random(shape) * 1000).astype(dtype)
    parts = stins.encode_image(7, 3, array, compression, image_key=2)
    msg = stins.decode_stins(parts)
    assert isinstance(msg, stins.StinsImage)
    assert (msg.msg_number, msg.frame, msg.compression) == (7, 3, compression)
    assert msg.extra == {"image_key": 2}
    assert msg.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(msg.array, array)


def test_uncompressed_decode_is_zero_copy() -> None:
    import zmq

    array = np.arange(12, dtype=np.uint16).reshape(3, 4)
    head, data = stins.encode_image(0, 0, array)
    frames = [zmq.Frame(head), zmq.Frame(data)]
    msg = stins.decode_stins(frames)
    assert isinstance(msg, stins.StinsImage)
    assert np.shares_memory(msg.array, np.frombuffer(frames[1].buffer, np.uint8))
    np.testing.assert_array_equal(msg.array, array)


def test_big_endian_input_is_swapped() -> None:
    array = np.arange(6, dtype=">u2").reshape(2, 3)
    msg = stins.decode_stins(stins.encode_image(0, 0, array))
    assert isinstance(msg, stins.StinsImage)
    np.testing.assert_array_equal(msg.array, array)


def test_bslz4_is_an_hdf5_bitshuffle_chunk(tmp_path: Path) -> None:
    """The data part must be what the receiver's file writer stores as a direct chunk."""
    h5py = pytest.importorskip("h5py")
    bsh5 = pytest.importorskip("bitshuffle.h5")
    array = (np.arange(37 * 1000) % 997).astype(np.uint16).reshape(37, 1000)
    blob = stins.encode_image(0, 0, array, "bslz4")[1]
    assert struct.unpack(">QI", blob[:12]) == (array.nbytes, 8192)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        opts = {"compression": bsh5.H5FILTER, "compression_opts": (0, bsh5.H5_COMPRESS_LZ4)}
        d = f.create_dataset("d", shape=(1, *array.shape), dtype=array.dtype, chunks=(1, *array.shape), **opts)
        d.id.write_direct_chunk((0, 0, 0), blob)
        np.testing.assert_array_equal(d[0], array)
        ref = f.create_dataset("r", data=array[None], chunks=(1, *array.shape), **opts)
        assert ref.id.read_direct_chunk((0, 0, 0))[1] == blob


def test_header_and_end_round_trip() -> None:
    msg = stins.decode_stins(stins.encode_header(4, "/data/x.h5", meta={"exptime": 0.1}, scan_id=9))
    assert msg == stins.StinsHeader(4, "/data/x.h5", {"scan_id": 9}, ({"exptime": 0.1},))
    assert stins.decode_stins(stins.encode_series_end(5)) == stins.StinsEnd(5)


def test_encoder_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown compression"):
        stins.encode_image(0, 0, np.zeros(3, np.uint16), "gzip")
    with pytest.raises(ValueError, match="reserved"):
        stins.encode_image(0, 0, np.zeros(3, np.uint16), shape=[1])
    with pytest.raises(ValueError, match="dtype"):
        stins.encode_image(0, 0, np.array(["a"]))


def _image_head(**changes: Any) -> bytes:
    head = {"htype": "image", "frame": 0, "shape": [2, 2], "type": "uint16", "compression": "none", "msg_number": 1}
    head.update(changes)
    return json.dumps({k: v for k, v in head.items() if v is not None}).encode()


_GOOD = bytes(8)
_BSLZ4 = stins.encode_image(1, 0, np.arange(100, dtype=np.uint16).reshape(10, 10), "bslz4")[1]
_BS_HEAD = _image_head(shape=[10, 10], compression="bslz4")


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([], "no parts"),
        ([b'{"htype": "dimage-1.0"}'], "unknown STINS htype 'dimage-1.0'"),
        ([b"{}"], "unknown STINS htype None"),
        ([b"not json"], "not valid JSON"),
        ([b"\xff\xfe"], "not valid JSON"),
        ([b"[1, 2]"], "must be a JSON object"),
        ([_image_head()], "needs 1 data part after the header, got 0"),
        ([_image_head(), _GOOD, _GOOD], "needs 1 data part after the header, got 2"),
        ([_image_head(), _GOOD[:7]], "has 7 data bytes, shape [2, 2] of uint16 needs 8"),
        ([_image_head(type="mono12p"), _GOOD], "unknown data type 'mono12p'"),
        ([_image_head(type="object"), _GOOD], "unknown data type 'object'"),
        ([_image_head(type=None), _GOOD], "unknown data type None"),
        ([_image_head(shape=[2, -2]), _GOOD], "shape [2, -2] needs every axis >= 1"),
        ([_image_head(shape=[0, 4]), b""], "shape [0, 4] needs every axis >= 1"),
        ([_image_head(shape=[16, 0]), b""], "shape [16, 0] needs every axis >= 1"),
        ([_image_head(shape=[65536, 65536, 4]), _GOOD], "declares 34359738368 bytes, more than"),
        ([_image_head(frame=-1), _GOOD], "has frame -1, outside 0.."),
        ([_image_head(frame=2**63), _GOOD], "outside 0.."),
        ([b'{"htype": "image", "frame": ' + b"9" * 5000 + b"}", _GOOD], "integer with 5000 digits"),
        ([_image_head(image_key=float("inf")), _GOOD], "Infinity is not a finite number"),
        ([_image_head(image_key=float("nan")), _GOOD], "NaN is not a finite number"),
        ([b'{"htype": "image", "x": 1e999}', _GOOD], "is not finite"),
        ([b"[" * 50_000 + b"]" * 50_000], "nests deeper than 32 levels"),
        (
            [b'{"htype": "header", "msg_number": 0, "filename": "", "m": ' + b"[" * 3000 + b"]" * 3000 + b"}"],
            "nests deeper",
        ),
        ([b'{"a": "' + b"x" * (1 << 21) + b'"}'], "bytes of JSON, more than"),
        ([_image_head(shape="2x2"), _GOOD], "shape must be a list"),
        ([_image_head(frame="0"), _GOOD], "needs integer 'frame'"),
        ([_image_head(msg_number=None), _GOOD], "needs integer 'msg_number'"),
        ([_image_head(compression="lz4"), _GOOD], "unknown compression 'lz4'"),
        ([_BS_HEAD, _BSLZ4[:8]], "shorter than its 12-byte header"),
        ([_BS_HEAD, _BSLZ4[:-5]], "corrupt bslz4 data"),
        ([_BS_HEAD, _BSLZ4 + b"\0"], "corrupt bslz4 data"),
        ([_BS_HEAD, _BSLZ4[:20]], "truncated|corrupt"),
        ([_BS_HEAD, struct.pack(">QI", 100, 8192) + _BSLZ4[12:]], "says 100 bytes uncompressed"),
        ([_BS_HEAD, _BSLZ4[:8] + struct.pack(">I", 6) + _BSLZ4[12:]], "block size 6 bytes is invalid"),
        ([_BS_HEAD, _BSLZ4[:16] + bytes(len(_BSLZ4) - 16)], "corrupt bslz4 data"),
        ([b'{"htype": "header", "msg_number": 0}'], "needs a string 'filename'"),
        ([b'{"htype": "header", "msg_number": 0, "filename": ""}', b"x"], "header part 1 is not valid JSON"),
        ([b'{"htype": "series_end"}'], "needs integer 'msg_number'"),
    ],
)
def test_bad_stins_raises_frame_error(parts: list[bytes], message: str) -> None:
    with pytest.raises(FrameError, match=message.replace("[", r"\[").replace("]", r"\]")):
        stins.decode_stins(parts)


def test_corrupt_lz4_payload_raises_frame_error() -> None:
    body = bytearray(_BSLZ4)
    body[17:40] = b"\xff" * 23  # inside the first block's LZ4 stream, lengths intact
    with pytest.raises(FrameError, match="corrupt bslz4"):
        stins.decode_stins([_BS_HEAD, bytes(body)])


def test_frame_error_is_a_value_error() -> None:
    assert issubclass(FrameError, ValueError)


def test_real_dranspose_recording_decodes(shared_data: Path) -> None:
    from dranspose.replay import get_internals

    msgs = [m.streams["xrd"] for m in get_internals(shared_data / "dranspose_recordings" / "dump_xrd.cbors")]
    assert {s.typ for s in msgs} == {"STINS"}
    decoded = [stins.decode_stins(s.frames) for s in msgs]
    assert decoded[0] == stins.StinsHeader(0, "output/xrd.h5")
    assert decoded[-1] == stins.StinsEnd(10)
    images = decoded[1:-1]
    assert len(images) == 9
    for i, img in enumerate(images):
        assert isinstance(img, stins.StinsImage)
        assert (img.frame, img.msg_number, img.array.shape) == (i, i + 1, (10, 10))
        assert img.array.dtype == np.dtype(np.uint16)
    first = images[0]
    assert isinstance(first, stins.StinsImage)
    assert first.array[0, :3].tolist() == [1, 18, 0]


# -- PCAP_RAW -------------------------------------------------------------------------

FIELDS = [
    pcap.PcapField("PCAP.BITS0", "uint32", "Value"),
    pcap.PcapField("INENC1.VAL", "double", "Mean", 1.0, 0.0, ""),
    pcap.PcapField("PCAP.TS_TRIG", "double", "Value", 8e-09, 0.0, "s"),
]


def test_an_overrun_counts_the_frames_past_the_layout_in_a_run() -> None:
    assert pcap_checks.frames_with_overrun(10, {0, 5, 9}) == 10
    assert pcap_checks.frames_with_overrun(10, {9, 10, 11, 13}) == 14  # 12 lost: the run goes on
    assert pcap_checks.frames_with_overrun(10, {10, 11, 15}) == 12  # 15: three past the run, not in it
    assert pcap_checks.frames_with_overrun(10, {10, 1 << 20}) == 11  # a corrupt number far past it
    assert pcap_checks.frames_with_overrun(None, {1, 2}) is None  # no layout
    full = set(range(48))
    assert pcap_checks.pandas_count([12, 50], 48, 48, full) == pcap_checks.PandaCount(1, 48, 48, 50)
    assert pcap_checks.pandas_count([], 48, 48, full) is None  # no END
    assert pcap_checks.pandas_count([12], 48, 48, full) is None  # rows after the only END: a re-arm's
    assert pcap_checks.pandas_count([41], 40, 48, set(range(40))).surplus == 0  # stopped early, in step


def test_pcap_header_bytes_match_the_panda() -> None:
    from datetime import UTC, datetime

    text = pcap.encode_pcap_header(FIELDS, datetime(2024, 8, 21, 13, 59, 53, 533000, tzinfo=UTC))
    assert text == (
        b"arm_time: 2024-08-21T13:59:53.533Z\nmissed: 0\nprocess: Scaled\nformat: ASCII\nfields:\n"
        b" PCAP.BITS0 uint32 Value\n"
        b" INENC1.VAL double Mean scale: 1 offset: 0 units: \n"
        b" PCAP.TS_TRIG double Value scale: 8e-09 offset: 0 units: s\n\n"
    )
    header = pcap.decode_pcap_event([text])
    assert header == pcap.PcapHeader(
        "2024-08-21T13:59:53.533Z", tuple(FIELDS), {"missed": "0", "process": "Scaled", "format": "ASCII"}
    )
    assert isinstance(header, pcap.PcapHeader)
    assert header.keys == ("PCAP.BITS0.Value", "INENC1.VAL.Mean", "PCAP.TS_TRIG.Value")


def test_pcap_values_and_end_round_trip() -> None:
    header = pcap.decode_pcap_event([pcap.encode_pcap_header(FIELDS, "2024-01-01T00:00:00.000Z")])
    assert isinstance(header, pcap.PcapHeader)
    line = pcap.encode_pcap_values([872210400, 375.1871248, 0.035941168])
    assert line == b" 872210400 375.1871248 0.035941168\n"
    values = pcap.decode_pcap_event([line], header)
    assert values == pcap.PcapValues(
        (872210400, 375.1871248, 0.035941168),
        {"PCAP.BITS0.Value": 872210400, "INENC1.VAL.Mean": 375.1871248, "PCAP.TS_TRIG.Value": 0.035941168},
    )
    unnamed = pcap.decode_pcap_event([line])
    assert isinstance(unnamed, pcap.PcapValues)
    assert unnamed.values == {}
    assert pcap.decode_pcap_event([pcap.encode_pcap_end(10)]) == pcap.PcapEnd(10, "Disarmed")
    assert pcap.decode_pcap_event([b"END 3 Ok\n"]) == pcap.PcapEnd(3, "Ok")


def test_pcap_header_extra_lines_and_dranspose_style() -> None:
    text = (
        b"arm_time: 1970-01-14T06:36:37.093Z\nstart_time: 1970-01-14T06:36:37.093Z\nmissed: 0\n"
        b"process: Scaled\nformat: ASCII\nfields:\n INENC2.VAL double Min scale: 1 offset: 0 units: \n"
        b" SFP3_SYNC_IN.POS1 double Mean scale: 1 offset: 0 units: \n\n"
    )
    header = pcap.decode_pcap_event([text])
    assert isinstance(header, pcap.PcapHeader)
    assert header.info["start_time"] == "1970-01-14T06:36:37.093Z"
    assert header.keys == ("INENC2.VAL.Min", "SFP3_SYNC_IN.POS1.Mean")
    # dranspose's own PCAP_RAW model writes fields without scaling
    from datetime import datetime

    from dranspose.data.positioncap import PositionCapField, PositionCapStart

    data = PositionCapStart(arm_time=datetime(2024, 1, 1)).to_stream_data(
        [PositionCapField(name="INENC1.VAL.Mean", type="double")]
    )
    header = pcap.decode_pcap_event(data.frames)
    assert isinstance(header, pcap.PcapHeader)
    assert header.fields == (pcap.PcapField("INENC1.VAL", "double", "Mean"),)


def test_angle_conversion() -> None:
    values = {"INENC1.VAL.Mean": 1000.0 * 12.5, "SFP3_SYNC_IN.POS1.Mean": 11930463 * 60.0}
    assert pcap.angle_from_values(values, counts_per_degree=1000.0) == pytest.approx(12.5)
    danmax = pcap.angle_from_values(values, "SFP3_SYNC_IN.POS1.Mean", 11930463, -50.0)
    assert danmax == pytest.approx(10.0)
    assert pcap.counts_from_angle(10.0, 11930463, -50.0) == pytest.approx(11930463 * 60.0)
    with pytest.raises(FrameError, match=r"no field 'INENC2.VAL.Value'; captured: \['INENC1.VAL.Mean'"):
        pcap.angle_from_values(values, "INENC2.VAL.Value")
    with pytest.raises(ValueError, match="must not be 0"):
        pcap.angle_from_values(values, counts_per_degree=0)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([], "exactly 1 frame, got 0"),
        ([b" 1\n", b" 2\n"], "exactly 1 frame, got 2"),
        ([b"\xff 1\n"], "not ASCII"),
        ([b"   \n"], "empty PandA value line"),
        ([b" 1 abc\n"], "'abc' is not a number"),
        ([b"END x\n"], "malformed PandA END line"),
        ([b"arm_time: t\nfields:\n\n"], "lists no fields"),
        ([b"arm_time: t\nfields:\n INENC1.VAL\n\n"], "malformed field line"),
        ([b"arm_time: t\nfields:\n A.B double Mean scale: x offset: 0 units: \n\n"], "bad scale/offset"),
        ([b"arm_time: t\nformat: Base64\nfields:\n A.B double Value\n\n"], "format 'Base64' is not supported"),
        ([b"arm_time: t\nbogus\nfields:\n A.B double Value\n\n"], "not 'key: value'"),
    ],
)
def test_bad_pcap_raises_frame_error(parts: list[bytes], message: str) -> None:
    with pytest.raises(FrameError, match=message):
        pcap.decode_pcap_event(parts)


def test_value_count_must_match_header() -> None:
    header = pcap.decode_pcap_event([pcap.encode_pcap_header(FIELDS, "t")])
    assert isinstance(header, pcap.PcapHeader)
    with pytest.raises(FrameError, match="has 2 values, the header lists 3 fields"):
        pcap.decode_pcap_event([b" 1 2\n"], header)


# -- frame kinds ----------------------------------------------------------------------

D, F, P, INV = ImageKey.DARK, ImageKey.FLAT, ImageKey.PROJECTION, ImageKey.INVALID


def test_kind_rule_by_counts() -> None:
    rule = FrameKindRule.from_counts(2, 1, 3, n_flats_after=1, n_darks_after=1)
    assert [rule.kind(i, {"image_key": 0}) for i in range(9)] == [D, D, F, P, P, P, F, D, INV]
    assert [rule.past_layout(i) for i in (7, 8, 20)] == [None, 8, 8]  # an overrun, named as one
    assert FrameKindRule.from_counts(1, 1).past_layout(20) is None  # open-ended: nothing lies past it
    by_header = FrameKindRule(((D, 1),), header_key="image_key")
    assert by_header.past_layout(5, {"image_key": 0}) is None and by_header.past_layout(5, {}) == 1
    open_ended = FrameKindRule.from_counts(1, 1)
    assert [open_ended.by_position(i) for i in range(4)] == [D, F, P, P]
    assert FrameKindRule().by_position(5) == P
    with pytest.raises(ValueError, match="need n_projections"):
        FrameKindRule.from_counts(1, 1, None, n_flats_after=1)
    with pytest.raises(ValueError, match="only the last segment"):
        FrameKindRule(((P, None), (F, 1)))


def test_kind_rule_from_spec() -> None:
    rule = FrameKindRule.from_spec("flat:2, dark:1, proj:*")
    assert [rule.by_position(i) for i in range(5)] == [F, F, D, P, P]
    with pytest.raises(ValueError, match="unknown frame kind 'bright'"):
        FrameKindRule.from_spec("bright:2")
    with pytest.raises(ValueError, match="count must be an integer"):
        FrameKindRule.from_spec("dark:two")


def test_kind_rule_by_header() -> None:
    rule = FrameKindRule(header_key="image_key", require_header=True)
    assert rule.kind(0, {"image_key": 2}) == D
    assert rule.kind(0, {"image_key": "flat"}) == F
    with pytest.raises(FrameError, match="frame 3 has no 'image_key'"):
        rule.kind(3, {})
    with pytest.raises(FrameError, match="frame 4: bad 'image_key'"):
        rule.kind(4, {"image_key": 7})
    fallback = FrameKindRule(((D, 1),), header_key="image_key")
    assert [fallback.kind(0, {}), fallback.kind(1, {}), fallback.kind(1, {"image_key": 1})] == [D, INV, F]
    assert rule.kind(0, {"image_key": np.int64(0)}) == P


@pytest.mark.parametrize("value", [True, False, 1.7, 0.9, 1.0, [1], None])
def test_an_image_key_that_is_no_whole_number_is_refused_not_truncated(value: object) -> None:
    """int() made True and 1.7 flats and 0.9 a projection, with no reject."""
    rule = FrameKindRule(header_key="image_key", require_header=True)
    with pytest.raises(FrameError, match=r"frame 5: bad 'image_key'.*not a whole number"):
        rule.kind(5, {"image_key": value})


def test_a_declared_size_beyond_the_workers_bound_is_refused_before_decompressing() -> None:
    from streamtomo.pipeline.config import PipelineConfig
    from streamtomo.pipeline.streaming.frame_processor import FrameProcessor

    processor = FrameProcessor(PipelineConfig())
    processor.process(0, ImageKey.DARK, np.zeros((4, 32), np.uint16), None)
    limit = processor.frame_bytes_limit()
    assert limit == 64 << 20  # 4x32 pixels: the floor, far below the decoders' 1 GiB
    # 16384^2 uint16 (512 MiB) declared in 76 bytes of "bslz4": a bomb for this detector.
    head = _image_head(shape=[16384, 16384], compression="bslz4")
    bomb = struct.pack(">QI", 16384 * 16384 * 2, 8192) + bytes(64)
    with pytest.raises(FrameError, match=f"more than the {limit} allowed"):
        stins.decode_stins([head, bomb], limit)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # 100 KB in one field line: the field pattern used to backtrack on it for 36 s.
        (b"arm_time: 2024-01-01T00:00:00.000Z\nfields:\n " + b"A " * 50_000 + b"\n\n", "more than 65536"),
        (b"arm_time: 2024-01-01T00:00:00.000Z\nfields:\n " + b"A " * 5_000 + b"\n\n", "longer than 4096"),
        (b"arm_time: 2024-01-01T00:00:00.000Z\n" + b"x: y\n" * 20_000 + b"fields:\n A.B double Mean\n\n", "more than"),
        (b" " + b"1 " * 50_000 + b"\n", "longer than 4096"),
        (b"END " + b"9" * 5000 + b" Disarmed\n", "malformed PandA END line"),
        (b" 1 " + b"9" * 5000 + b"\n", "longer than 4096"),
        (b" 1 " + b"9" * 100 + b"\n", "out of range"),
        (b" 1 inf\n", "not a finite number"),
    ],
)
def test_pandas_messages_are_bounded(text: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        pcap.decode_pcap_event([text])


# -- a declared byte order ---------------------------------------------------------------


def _declared(array: np.ndarray, name: str, compression: str = "none") -> list[bytes]:
    """An image message whose header names ``name`` and whose data part is ``array``'s
    bytes as they are (encode_image would swap them to little-endian)."""
    data = array.tobytes() if compression == "none" else stins.bslz4_compress(array)
    head = {"htype": "image", "msg_number": 1, "frame": 0, "shape": list(array.shape), "type": name}
    return [json.dumps({**head, "compression": compression}).encode(), data]


@pytest.mark.parametrize("compression", ["none", "bslz4"])
@pytest.mark.parametrize(("name", "native"), [(">u2", "uint16"), (">i4", "int32"), (">f4", "float32")])
def test_a_declared_byte_order_is_honoured_and_the_frame_comes_out_native(
    compression: str, name: str, native: str
) -> None:
    """A header that says ">u2" sends big-endian pixels: read as little-endian they were
    all byte-swapped (a projection 1.4 times off, nothing counted)."""
    values = (np.arange(1200) % 1000 + 3).reshape(30, 40)
    msg = stins.decode_stins(_declared(values.astype(name), name, compression))
    assert isinstance(msg, stins.StinsImage)
    np.testing.assert_array_equal(msg.array, values)
    # Native order: numba kernels refuse others, and ">u2" would name another detector dtype.
    assert msg.array.dtype.isnative and str(msg.array.dtype) == native
    # A name without an order is little-endian, as the Dectris and Orca streams send it.
    for plain in (native, name[1:]):
        msg = stins.decode_stins(_declared(values.astype("<" + name[1:]), plain, compression))
        assert isinstance(msg, stins.StinsImage)
        np.testing.assert_array_equal(msg.array, values)


# -- process: Raw ----------------------------------------------------------------------------

RAW_FIELDS = [
    pcap.PcapField("PCAP.TS_TRIG", "int64", "Value", 8e-09, 0.0, "s"),
    pcap.PcapField("INENC1.VAL", "int32", "Value", 0.5, 10.0, "deg"),
    pcap.PcapField("INENC1.VAL", "int32", "Min", 0.5, 10.0, "deg"),
    pcap.PcapField("INENC1.VAL", "int32", "Max", 0.5, 10.0, "deg"),
    pcap.PcapField("INENC2.VAL", "int64", "Mean", 0.5, 10.0, "deg"),  # a sum in Raw
    pcap.PcapField("INENC3.VAL", "int32", "Value", 1.0, 0.0, ""),
    pcap.PcapField("PCAP.BITS0", "uint32", "Value"),  # no scale printed
]


def _header(fields: list[pcap.PcapField], process: str) -> pcap.PcapHeader:
    header = pcap.decode_pcap_event([pcap.encode_pcap_header(fields, "2024-11-05T10:00:00.000Z", process=process)])
    assert isinstance(header, pcap.PcapHeader)
    return header


def test_raw_values_get_the_headers_scale_and_offset_as_the_scaled_port_applies_them() -> None:
    """'process: Raw' sends counts and leaves value * scale + offset to the client: the
    angles were taken from the counts (with scale 0.5, every one doubled)."""
    line = pcap.encode_pcap_values([125000000, 7000, 6990, 7010, 70000, 41, 5])
    row = pcap.decode_pcap_event([line], _header(RAW_FIELDS, "Raw"))
    assert isinstance(row, pcap.PcapValues)
    assert row.raw == (125000000, 7000, 6990, 7010, 70000, 41, 5)  # as printed
    assert row.values == {
        "PCAP.TS_TRIG.Value": pytest.approx(1.0),
        "INENC1.VAL.Value": 3510.0,
        "INENC1.VAL.Min": 3505.0,
        "INENC1.VAL.Max": 3515.0,
        "INENC2.VAL.Mean": 70000,  # Raw's sum: no scale makes it the mean (raw_mean_refusal)
        "INENC3.VAL.Value": 41,
        "PCAP.BITS0.Value": 5,
    }
    assert type(row.values["INENC3.VAL.Value"]) is int  # scale 1, offset 0: exact as it came
    # The same capture through the Scaled port: the same angle.
    scaled = pcap.decode_pcap_event([b" 1 3510 3505 3515 3510 41 5\n"], _header(RAW_FIELDS, "Scaled"))
    assert isinstance(scaled, pcap.PcapValues)
    assert scaled.values["INENC1.VAL.Value"] == 3510 and scaled.values["INENC2.VAL.Mean"] == 3510  # as sent
    for values in (row.values, scaled.values):
        assert pcap.angle_from_values(values, "INENC1.VAL.Value", 1000.0, 0.0, 32, 90.0) == pytest.approx(3.51)


def test_a_raw_value_that_scales_past_a_double_is_refused() -> None:
    fields = [pcap.PcapField("INENC1.VAL", "int32", "Value", 1e308, 0.0, "")]
    with pytest.raises(FrameError, match=r"INENC1.VAL.Value scaled by 1e\+308 .* is not finite"):
        pcap.decode_pcap_event([b" 2000000000\n"], _header(fields, "Raw"))


DANMAX_CPD = 11930463.0  # 2^32 counts per turn


def _wrapped(counts: float) -> int:
    return int((round(counts) + 2**31) % 2**32 - 2**31)


@pytest.mark.parametrize("process", ["Raw", "Scaled"])
def test_a_scaled_wrapping_counter_unwraps_by_its_own_period(process: str) -> None:
    """A 32-bit counter with header scale 0.5 wraps every 2^32 counts, 2^31 of its values:
    the angle is unwrapped by that period, and a straddled wrap is seen in Min and Max."""
    scale, offset = 0.5, 0.0
    fields = [
        pcap.PcapField("INENC1.VAL", "int32", "Value", scale, offset, ""),
        pcap.PcapField("INENC1.VAL", "int32", "Min", scale, offset, ""),
        pcap.PcapField("INENC1.VAL", "int32", "Max", scale, offset, ""),
    ]
    header = _header(fields, process)
    cpd = DANMAX_CPD * scale  # the values' units per degree, as the Scaled port sends them
    counts = _wrapped((188.8 + 50.0) * DANMAX_CPD)  # past the wrap at 130 degrees
    sent = counts if process == "Raw" else counts * scale
    row = pcap.decode_pcap_event([pcap.encode_pcap_values([sent, sent, sent])], header)
    assert isinstance(row, pcap.PcapValues)
    angle = pcap.angle_from_values(
        row.values, "INENC1.VAL.Value", cpd, -50.0, 32, 98.8, scale=header.scale_of("INENC1.VAL.Value")
    )
    assert angle == pytest.approx(188.8, abs=1e-3)
    # A wrap within the exposure: Min and Max a whole counter range apart, in values.
    low, high = -(2**31) + 5, 2**31 - 5
    line = [low, low, high] if process == "Raw" else [low * scale, low * scale, high * scale]
    row = pcap.decode_pcap_event([pcap.encode_pcap_values(line)], header)
    assert isinstance(row, pcap.PcapValues)
    with pytest.raises(EncoderWrapped):
        pcap.angle_from_values(row.values, "INENC1.VAL.Value", cpd, -50.0, 32, 98.8, scale=0.5)


def test_a_zero_scale_gives_no_angle_but_a_reason() -> None:
    with pytest.raises(FrameError, match=r"scale 0\.0: its values hold no position"):
        pcap.angle_from_values({"INENC1.VAL.Value": 3.0}, "INENC1.VAL.Value", 1000.0, scale=0.0)


# A grid from -40 to 120 degrees: DanMAX's wrap at 130 lies past it (the existing
# test_the_wrap_is_named_only_where_the_scan_reaches_it has the cases with scale 1).
SHORT_GRID = {"angle_start": -40.0, "angle_range": 160.0}


@pytest.mark.parametrize(
    ("scale", "offset", "grid", "reached"),
    [
        (0.5, 0.0, {}, True),  # half a value per count: still at 130 (it was taken for 310)
        (1.0, -50.0 * DANMAX_CPD, SHORT_GRID, True),  # the offset moves it to 80 degrees
        (-0.5, 0.0, {}, True),  # a negative scale, and counts_per_degree with it
    ],
)
def test_the_wrap_notice_knows_the_fields_scale_and_offset(
    scale: float, offset: float, grid: dict[str, float], reached: bool
) -> None:
    from streamtomo.pipeline.config import PipelineConfig

    config = PipelineConfig.from_mapping(
        {
            "n_projections": 45,
            "encoder_field": "INENC1.VAL.Mean",
            "counts_per_degree": DANMAX_CPD * scale,  # the values' units per degree
            "encoder_offset": -50.0,
            **grid,
        }
    )
    assert pcap_checks.wrap_within_scan(config, scale, offset) is reached
    header = _header([pcap.PcapField("INENC1.VAL", "double", "Mean", scale, offset, "")], "Scaled")
    notices = pcap_checks.pcap_header_notices(header, config, 0)
    assert [n.reason for n in notices] == (["encoder_wrap_unchecked"] if reached else [])


@pytest.mark.parametrize("compression", ["none", "bslz4"])
def test_an_eiger_image_sent_big_endian_decodes_to_its_values_in_native_order(compression: str) -> None:
    """Encoding ">" (and "bs16-lz4>") was decoded to the right values in a big-endian
    array: the worker's kernels refuse non-native arrays, and ">u2" names another
    detector than the "uint16" of the same camera's little-endian frames."""
    from streamtomo.pipeline.formats import eiger

    image = (np.arange(12 * 10) * 37 % 4096).astype(np.uint16).reshape(12, 10)
    swapped = image.astype(">u2")
    blob = swapped.tobytes() if compression == "none" else stins.bslz4_compress(swapped)
    parts = eiger.encode_image(4, 7, image, compression)
    info = json.loads(parts[1])
    info.update(encoding=">" if compression == "none" else "bs16-lz4>", size=len(blob))
    message = eiger.decode_eiger_legacy([parts[0], json.dumps(info).encode(), blob, *parts[3:]])
    assert isinstance(message, stins.StinsImage)
    assert message.array.dtype == np.dtype(np.uint16) and message.array.dtype.isnative
    np.testing.assert_array_equal(message.array, image)
