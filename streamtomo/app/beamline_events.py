"""What the beamline sends for a scan, as dranspose events, and the scan's mapping.

A :class:`BeamlineEvent` is one trigger: the detector's message (STINS or Dectris
Stream v1) and the PandA's bytes for it. :func:`frame_events` encodes simulated or
measured frames, :func:`recorded_events` re-sends dranspose recordings byte for byte,
and :func:`scan_mapping` is the controller's sequence for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.formats import eiger, pcap, stins
from streamtomo.pipeline.formats.errors import FrameError
from streamtomo.pipeline.formats.kinds import FrameKindRule, FrameNumbering
from streamtomo.pipeline.formats.limits import json_object
from streamtomo.pipeline.scan import Frame, ImageKey

TS_FIELD = pcap.PcapField("PCAP.TS_TRIG", "double", "Value", 8e-09, 0.0, "s")
BROADCAST = (ImageKey.DARK, ImageKey.FLAT)


@dataclass(frozen=True)
class BeamlineEvent:
    """One dranspose event: a detector message and the PandA bytes for the same trigger."""

    number: int  # 0 headers, 1..N frames, N+1 ends
    detector: list[bytes]
    angle: bytes
    frame: int | None = None  # scan frame index; None for headers and ends
    key: ImageKey | None = None

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.detector)


def frame_events(
    frames: Iterable[Frame],
    config: PipelineConfig,
    detector_format: str = "stins",
    compression: str = "none",
) -> list[BeamlineEvent]:
    """Encode a scan as the detector and the PandA send it (layout of ``streamtomo.app.recordings``)."""
    frames = list(frames)
    name, capture = pcap.split_field_key(config.encoder_field)
    header_fields = [TS_FIELD, pcap.PcapField(name, "double", capture, 1.0, 0.0, "")]
    rows, cols = frames[0].data.shape if frames else (0, 0)
    if detector_format == "stins":
        head = stins.encode_header(0, "streamtomo-play")
    else:
        head = eiger.encode_header(
            1, {"x_pixels_in_detector": cols, "y_pixels_in_detector": rows, "nimages": len(frames)}
        )
    events = [BeamlineEvent(0, head, pcap.encode_pcap_header(header_fields))]
    for number, frame in enumerate(frames, start=1):
        if detector_format == "stins":
            parts = stins.encode_image(number, frame.index, frame.data, compression, image_key=int(frame.key))
        else:
            parts = eiger.encode_image(
                1,
                frame.index,
                frame.data,
                "bslz4" if compression == "bslz4" else "none",
                appendix={"image_key": int(frame.key)},
            )
        # A dark or flat without an angle: the stage sits at encoder zero.
        counts = (
            0.0
            if frame.angle_deg is None
            else pcap.counts_from_angle(frame.angle_deg, config.counts_per_degree, config.encoder_offset)
        )
        line = pcap.encode_pcap_values([(number - 1) * 0.01, counts])
        events.append(BeamlineEvent(number, parts, line, frame.index, frame.key))
    end = stins.encode_series_end(len(frames) + 1) if detector_format == "stins" else eiger.encode_series_end(1)
    events.append(BeamlineEvent(len(frames) + 1, end, pcap.encode_pcap_end(len(frames))))
    return events


def recorded_events(paths: Sequence[str | Path], config: PipelineConfig) -> list[BeamlineEvent]:
    """Events of dranspose recordings (``.cbors``), re-sent byte for byte."""
    from streamtomo.app.recordings import read_events  # dranspose, lazily

    rule = FrameKindRule.from_config(config)  # the rule the workers apply
    numbering = FrameNumbering(config.fixed_frame_base())  # and their frame positions
    events: list[BeamlineEvent] = []
    for number, streams in read_events([str(p) for p in paths]):
        detector: list[bytes] = []
        angle = b""
        frame: int | None = None
        key: ImageKey | None = None
        for data in streams.values():
            parts = [bytes(stins.as_buffer(p)) for p in data.frames]
            if data.typ == pcap.STREAM_TYPE:
                angle = b"".join(parts)
            elif data.typ in (stins.STREAM_TYPE, eiger.STREAM_TYPE):
                detector = parts
                frame, key = _frame_kind(parts, rule, numbering, number)
        events.append(BeamlineEvent(number, detector, angle, frame, key))
    return events


def _frame_kind(
    parts: Sequence[bytes], rule: FrameKindRule, numbering: FrameNumbering, event_number: int
) -> tuple[int | None, ImageKey | None]:
    """Frame number and kind from a detector message's JSON header (data not decoded)."""
    try:
        # Bounded like the workers' decoders: a hostile recording must not crash play.
        head = json_object(parts[0], "detector header")
    except (IndexError, FrameError):
        return None, None
    if head.get("htype") not in ("image", eiger.IMAGE) or not isinstance(head.get("frame"), int):
        return None, None
    extra = dict(head)
    if head.get("htype") == eiger.IMAGE and len(parts) > 4:
        with contextlib.suppress(FrameError):
            extra.update(json_object(parts[4], "detector appendix"))
    position = numbering.position(head["frame"], event_number)
    try:
        return head["frame"], rule.kind(position, extra)
    except (ValueError, KeyError, TypeError, OverflowError):
        return head["frame"], ImageKey.PROJECTION


def scan_mapping(events: Sequence[BeamlineEvent], detector_stream: str, angle_stream: str) -> dict[str, Any]:
    """The controller's sequence: parts of consecutive references (to every worker)
    and of projections (each to one worker). Start and end events are added by
    dranspose (``all_wrap``): they are the headers and the ends."""
    body = [e for e in events if e.frame is not None]
    parts: dict[str, dict[str, list[list[dict[str, Any]]]]] = {}
    sequence: list[str] = []
    run: list[list[dict[str, Any]]] = []
    run_broadcast: bool | None = None

    def close() -> None:
        if run:
            name = f"{'references' if run_broadcast else 'projections'}-{len(sequence)}"
            parts[name] = {detector_stream: list(run), angle_stream: list(run)}
            sequence.append(name)

    for event in body:
        broadcast = event.key in BROADCAST
        if broadcast != run_broadcast:
            close()
            run, run_broadcast = [], broadcast
        # One virtual worker per projection: dranspose gives it to the next idle worker.
        run.append([{"tags": ["generic"], "constraint": None if broadcast else len(run)}])
    close()
    return {"parts": parts, "sequence": sequence}
