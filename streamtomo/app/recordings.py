"""Scans as dranspose streams: generators, ``.cbors`` recordings and replay sources.

A scan becomes two streams laid out as dranspose's own ingesters produce them (events
start at 0, as the controller numbers them):

=============  ===========================  ==============================
event          detector stream (``STINS``)  angle stream (``PCAP_RAW``)
=============  ===========================  ==============================
0              ``header``                   PandA header block
1 .. N         image of scan frame n-1      value line of trigger n-1
N + 1          ``series_end``               ``END N Disarmed``
=============  ===========================  ==============================

So event ``e`` (1..N) holds the e-th frame (STINS ``frame`` = ``Frame.index``) and its
angle; ``msg_number`` equals the event number. dranspose is imported lazily so that
``pipeline`` stays importable without it.
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from streamtomo.pipeline.formats import pcap, stins
from streamtomo.pipeline.formats.errors import FrameError
from streamtomo.pipeline.formats.kinds import FrameKindRule
from streamtomo.pipeline.scan import Frame, ImageKey

if TYPE_CHECKING:
    from dranspose.event import (  # type: ignore[import-untyped,unused-ignore]
        InternalWorkerMessage,
        StreamData,
    )

TS_FIELD = pcap.PcapField("PCAP.TS_TRIG", "double", "Value", 8e-09, 0.0, "s")


def _message(event: int, stream: str, typ: str, parts: list[bytes]) -> InternalWorkerMessage:
    from dranspose.event import InternalWorkerMessage, StreamData

    return InternalWorkerMessage(event_number=event, streams={stream: StreamData(typ=typ, frames=parts)})


def _detector_events(
    frames: Iterable[Frame],
    stream: str,
    compression: str,
    image_key_in_header: bool,
    filename: str,
) -> Iterator[InternalWorkerMessage]:
    yield _message(0, stream, stins.STREAM_TYPE, stins.encode_header(0, filename))
    event = 0
    for event, frame in enumerate(frames, start=1):
        extra = {"image_key": int(frame.key)} if image_key_in_header else {}
        parts = stins.encode_image(event, frame.index, frame.data, compression, **extra)
        yield _message(event, stream, stins.STREAM_TYPE, parts)
    yield _message(event + 1, stream, stins.STREAM_TYPE, stins.encode_series_end(event + 1))


def _angle_events(
    frames: Iterable[Frame],
    stream: str,
    encoder_field: str,
    counts_per_degree: float,
    offset_deg: float,
    frame_period_s: float,
    arm_time: datetime | str | None,
) -> Iterator[InternalWorkerMessage]:
    name, capture = pcap.split_field_key(encoder_field)
    fields = [TS_FIELD, pcap.PcapField(name, "double", capture, 1.0, 0.0, "")]
    yield _message(0, stream, pcap.STREAM_TYPE, [pcap.encode_pcap_header(fields, arm_time)])
    event = 0
    for event, frame in enumerate(frames, start=1):
        # A dark or flat without an angle: the stage sits at encoder zero.
        counts = (
            0.0 if frame.angle_deg is None else pcap.counts_from_angle(frame.angle_deg, counts_per_degree, offset_deg)
        )
        line = pcap.encode_pcap_values([(event - 1) * frame_period_s, counts])
        yield _message(event, stream, pcap.STREAM_TYPE, [line])
    yield _message(event + 1, stream, pcap.STREAM_TYPE, [pcap.encode_pcap_end(event)])


def scan_to_internals(
    frames: Iterable[Frame],
    detector_stream: str = "detector",
    angle_stream: str = "angle",
    compression: str = "none",
    counts_per_degree: float = 1.0,
    offset_deg: float = 0.0,
    encoder_field: str = pcap.DEFAULT_ANGLE_FIELD,
    image_key_in_header: bool = True,
    filename: str = "",
    frame_period_s: float = 0.01,
    arm_time: datetime | str | None = None,
) -> tuple[Iterator[InternalWorkerMessage], Iterator[InternalWorkerMessage]]:
    """Detector and angle stream generators for one scan (layout: module docstring).

    ``frames`` is read once, lazily; the two generators share it through a tee, whose
    buffer stays small when they are consumed in step (as dranspose replay does).
    """
    if compression not in stins.COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; allowed: {stins.COMPRESSIONS}")
    if counts_per_degree == 0:
        raise ValueError("counts_per_degree must not be 0")
    pcap.split_field_key(encoder_field)  # fail now, not at the first event
    for_detector, for_angle = itertools.tee(frames)
    return (
        _detector_events(for_detector, detector_stream, compression, image_key_in_header, filename),
        _angle_events(
            for_angle,
            angle_stream,
            encoder_field,
            counts_per_degree,
            offset_deg,
            frame_period_s,
            arm_time,
        ),
    )


# -- recordings -----------------------------------------------------------------------


def recording_name(stream: str, mapping_uuid: uuid.UUID | str, prefix: str = "dump_") -> str:
    """dranspose's dump name: ``{dump_prefix}{ingester_name}-{mapping_uuid}.cbors``,
    with the ingester's default name ``{stream}-ingester``."""
    return f"{prefix}{stream}-ingester-{mapping_uuid}.cbors"


def write_recordings(
    frames: Iterable[Frame],
    out_dir: str | PathLike[str],
    *,
    prefix: str = "dump_",
    mapping_uuid: uuid.UUID | str | None = None,
    **options: Any,
) -> list[Path]:
    """Write one dranspose recording per stream; returns ``[detector, angle]`` paths.

    Same bytes as an ingester's ``Dumper`` (CBOR self-describe tag around dranspose's
    message tags), so ``dranspose replay -f`` and ``replay.get_internals`` read them.
    ``options`` are :func:`scan_to_internals`'s. Existing files are overwritten.
    """
    import cbor2
    from dranspose.event import message_encoder

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4() if mapping_uuid is None else mapping_uuid
    gens = scan_to_internals(frames, **options)
    names = (options.get("detector_stream", "detector"), options.get("angle_stream", "angle"))
    paths = [out / recording_name(name, run, prefix) for name in names]
    with paths[0].open("wb") as det, paths[1].open("wb") as ang:
        for det_msg, ang_msg in zip(*gens, strict=True):
            cbor2.dump(cbor2.CBORTag(55799, det_msg), det, default=message_encoder)
            cbor2.dump(cbor2.CBORTag(55799, ang_msg), ang, default=message_encoder)
    return paths


def internal_events(frames: Iterable[Frame], **options: Any) -> Iterator[tuple[int, dict[str, StreamData]]]:
    """The events :func:`write_recordings` would record and :func:`read_events` read
    back, made in memory one at a time (``options``: :func:`scan_to_internals`'s)."""
    for det_msg, ang_msg in zip(*scan_to_internals(frames, **options), strict=True):
        if det_msg.event_number != ang_msg.event_number:
            raise ValueError(f"detector event {det_msg.event_number} beside angle event {ang_msg.event_number}")
        yield det_msg.event_number, {**det_msg.streams, **ang_msg.streams}


def read_events(
    paths: Sequence[str | PathLike[str]],
) -> Iterator[tuple[int, dict[str, StreamData]]]:
    """Merge recordings by event number, as ``dranspose replay`` does."""
    from dranspose.replay import get_internals

    merged = heapq.merge(*(get_internals(p) for p in paths), key=lambda m: m.event_number)
    for event, msgs in itertools.groupby(merged, key=lambda m: m.event_number):
        streams: dict[str, StreamData] = {}
        for msg in msgs:
            streams.update(msg.streams)
        yield int(event), streams


def _only_stream(streams: dict[str, StreamData], typ: str) -> str | None:
    names = [name for name, data in streams.items() if data.typ == typ]
    if len(names) > 1:
        raise ValueError(f"several {typ} streams {names}: name the one to read")
    return names[0] if names else None


def read_frames(
    paths: Sequence[str | PathLike[str]],
    rule: FrameKindRule | None = None,
    detector_stream: str | None = None,
    angle_stream: str | None = None,
    encoder_field: str = pcap.DEFAULT_ANGLE_FIELD,
    counts_per_degree: float = 1.0,
    offset_deg: float = 0.0,
) -> Iterator[Frame]:
    """Decode recordings back into frames.

    Streams default to the only STINS and the only PCAP_RAW stream; without an angle
    stream ``angle_deg`` is None. Kinds come from ``rule`` (default: the ``image_key``
    header entry, else projection). ``Frame.index`` is the STINS ``frame`` number.
    """
    rule = FrameKindRule() if rule is None else rule
    det_name, ang_name = detector_stream, angle_stream
    header: pcap.PcapHeader | None = None
    for _event, streams in read_events(paths):
        if det_name is None:
            det_name = _only_stream(streams, stins.STREAM_TYPE)
        if ang_name is None:
            ang_name = _only_stream(streams, pcap.STREAM_TYPE)
        angle: float | None = None
        if ang_name in streams:
            msg = pcap.decode_pcap_event(streams[ang_name].frames, header)
            if isinstance(msg, pcap.PcapHeader):
                header = msg
            elif isinstance(msg, pcap.PcapValues):
                if header is None:
                    raise FrameError(f"PandA stream {ang_name!r} has values before a header")
                angle = pcap.angle_from_values(msg.values, encoder_field, counts_per_degree, offset_deg)
        if det_name is None or det_name not in streams:
            continue
        image = stins.decode_stins(streams[det_name].frames)
        if isinstance(image, stins.StinsImage):
            key = rule.kind(image.frame, image.extra)
            yield Frame(image.frame, key, image.array, angle)


# -- replay sources -------------------------------------------------------------------


class ScanSource:
    """Base of replay sources: ``dranspose replay --source module:Class`` calls
    ``Class().get_source_generators()``. Subclass via :func:`make_source_class`."""

    frames_factory: Callable[[], Iterable[Frame]]
    options: ClassVar[dict[str, Any]] = {}

    def get_source_generators(self) -> list[Iterator[InternalWorkerMessage]]:
        return list(scan_to_internals(type(self).frames_factory(), **self.options))


def make_source_class(
    frames_factory: Callable[[], Iterable[Frame]], name: str = "ScanSource", **options: Any
) -> type[ScanSource]:
    """A no-argument source class for a scan. Bind it to a module name to replay it::

        # mybeamline.py
        MySource = make_source_class(lambda: my_frames(), compression="bslz4")
        # dranspose replay -w ... -r ... --source mybeamline:MySource

    ``frames_factory`` is called once per replay; ``options`` go to
    :func:`scan_to_internals`.
    """
    return type(
        name,
        (ScanSource,),
        {"frames_factory": staticmethod(frames_factory), "options": dict(options)},
    )


def synthetic_scan(
    n_darks: int = 2,
    n_flats: int = 2,
    n_projections: int = 36,
    rows: int = 4,
    cols: int = 32,
    seed: int = 0,
) -> Iterator[Frame]:
    """A tiny uint16 scan of an off-centre disc over 180 degrees, with Poisson noise.

    Darks and flats are at angle 0; frames are darks, flats, then projections.
    """
    rng = np.random.default_rng(seed)
    dark_level, flat_level = 100.0, 10000.0
    x = np.arange(cols) - (cols - 1) / 2
    radius, cx, cy = cols / 8, cols / 6, 0.0

    def noisy(mean: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return rng.poisson(np.broadcast_to(mean, (rows, cols))).astype(np.uint16)

    index = 0
    for key, count in ((ImageKey.DARK, n_darks), (ImageKey.FLAT, n_flats)):
        level = dark_level if key is ImageKey.DARK else dark_level + flat_level
        for _ in range(count):
            yield Frame(index, key, noisy(np.full(cols, level)), 0.0)
            index += 1
    for i in range(n_projections):
        angle = 180.0 * i / n_projections
        theta = np.deg2rad(angle)
        centre = cx * np.cos(theta) + cy * np.sin(theta)
        chord = 2 * np.sqrt(np.clip(radius**2 - (x - centre) ** 2, 0.0, None))
        mean = dark_level + flat_level * np.exp(-0.1 * chord)
        yield Frame(index, ImageKey.PROJECTION, noisy(mean), angle)
        index += 1


SimulatedSource = make_source_class(synthetic_scan, name="SimulatedSource")
