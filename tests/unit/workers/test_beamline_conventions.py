"""Real beamline conventions, through the worker adapter and the reducer core (no services).

Synthetic dranspose events laid out as the ingesters make them (event 0: the headers,
then one event per trigger, then the ends), with the conventions of real scans:
1-based detector frame numbers (the Orca at MAX IV DanMAX), a PandA whose 32-bit
encoder counts 11930463 per degree and wraps once per turn, a -50 degree offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from dranspose.event import EventData, StreamData
from dranspose.protocol import EventNumber, ParameterName, StreamName, WorkParameter

from streamtomo.app.recordings import synthetic_scan
from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.formats import pcap, stins
from streamtomo.pipeline.scan import Frame, ImageKey
from streamtomo.pipeline.streaming.live_scan import LiveScan
from streamtomo.workers.tomo_worker import TomoWorker

N_DARKS, N_FLATS, N_PROJ = 2, 2, 36
TS = pcap.PcapField("PCAP.TS_TRIG", "double", "Value", 8e-09, 0.0, "s")


def parameters(values: dict[str, object]) -> dict[Any, Any]:
    return {
        ParameterName(k): WorkParameter(name=ParameterName(k), data=str(v).encode(), value=v) for k, v in values.items()
    }


def scan_frames(first_frame: int = 0) -> list[Frame]:
    """Darks, flats, projections over 180 degrees; STINS ``frame`` from ``first_frame``."""
    return [
        Frame(f.index + first_frame, f.key, f.data, f.angle_deg)
        for f in synthetic_scan(N_DARKS, N_FLATS, N_PROJ, rows=4, cols=32)
    ]


def detector_events(frames: Sequence[Frame]) -> list[list[bytes]]:
    """The detector's messages per event: header, one image per trigger, series_end."""
    parts = [stins.encode_header(0, "conventions")]
    for number, frame in enumerate(frames, start=1):
        # msg_number goes on across series at DanMAX (211.. for frames 1..): only ``frame`` counts.
        parts.append(stins.encode_image(200 + number, frame.index, frame.data))
    parts.append(stins.encode_series_end(200 + len(frames) + 1))
    return parts


def events(detector: Sequence[list[bytes]], angle: Sequence[bytes] | None = None) -> list[EventData]:
    out = []
    for number, parts in enumerate(detector):
        streams = {StreamName("detector"): StreamData(typ=stins.STREAM_TYPE, frames=list(parts))}
        if angle is not None:
            streams[StreamName("angle")] = StreamData(typ=pcap.STREAM_TYPE, frames=[angle[number]])
        out.append(EventData(event_number=EventNumber(number), streams=streams))
    return out


def run_scan(scan_events: Sequence[EventData], values: dict[str, object], workers: int = 1) -> LiveScan:
    """Events to workers as dranspose routes them, results to the reducer's core.

    With several workers each event goes to one of them (the headers to the first
    only, as ``replay`` does), the ends to all (as a deployment's ``all_wrap`` does).
    """
    params = parameters(values)
    scan = LiveScan(PipelineConfig.from_mapping(values))
    pool = [TomoWorker(parameters=params, state=SimpleNamespace(name=f"w{i}")) for i in range(workers)]
    last = len(scan_events) - 1
    for event in scan_events:
        number = int(event.event_number)
        targets = pool if number == last else [pool[(number * 7) % workers]]
        for worker in targets:
            result = worker.process_event(event, params)
            if result is not None:
                scan.add_result(result)
    scan.finish()
    return scan


def counts_config(**values: object) -> dict[str, object]:
    base: dict[str, object] = {
        "n_darks_before": N_DARKS,
        "n_flats_before": N_FLATS,
        "n_projections": N_PROJ,
        "angle_stream": "",
        "flush_every": 4,
        "cor_sweep_steps": 0,
    }
    base.update(values)
    return base


# -- 1. frame numbers -------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize(("first_frame", "frame_base"), [(1, "auto"), (0, "auto"), (1, "1"), (0, "0")])
def test_kinds_by_position_whatever_the_frame_numbers_start_at(first_frame: int, frame_base: str, workers: int) -> None:
    scan_events = events(detector_events(scan_frames(first_frame)))
    scan = run_scan(scan_events, counts_config(frame_base=frame_base), workers)
    assert scan.state == "finished"
    assert scan.rejected == {}
    status = scan.status()
    assert (status["darks"], status["flats"], status["projections"]) == (N_DARKS, N_FLATS, N_PROJ)
    assert scan.lost_frames() == []
    assert scan.sinogram is not None and scan.sinogram.missing_slots().size == 0


def test_a_frame_before_a_fixed_base_is_rejected_with_its_reason() -> None:
    detector = detector_events(scan_frames(0))
    scan = run_scan(events(detector), counts_config(frame_base="1"))
    # Frame 0 lies before the first frame (1): counted, never a crash; the rest shift by one.
    assert scan.rejected.get("frame_before_base") == 1


def test_frame_base_must_be_auto_or_a_number() -> None:
    with pytest.raises(ValueError, match="frame_base must be 'auto' or an integer >= 0"):
        PipelineConfig.from_mapping({"frame_base": "first"})


def test_kinds_in_the_beamline_mapping_follow_the_frame_base() -> None:
    from streamtomo.app.beamline_events import _frame_kind
    from streamtomo.pipeline.formats.kinds import FrameKindRule, FrameNumbering

    config = PipelineConfig.from_mapping(counts_config())
    rule, numbering = FrameKindRule.from_config(config), FrameNumbering(config.fixed_frame_base())
    detector = detector_events(scan_frames(1))
    kinds = [_frame_kind(parts, rule, numbering, number)[1] for number, parts in enumerate(detector)][1:-1]
    assert kinds == [ImageKey.DARK] * N_DARKS + [ImageKey.FLAT] * N_FLATS + [ImageKey.PROJECTION] * N_PROJ


def test_auto_base_is_found_from_any_event() -> None:
    from streamtomo.pipeline.formats.kinds import FrameNumbering

    # A worker whose first image is event 7 (detector frame 7, 1-based) still finds base 1.
    numbering = FrameNumbering(None)
    assert numbering.position(7, 7) == 6
    assert numbering.position(1, 1) == 0
    numbering.reset()
    assert numbering.position(5, 6) == 5  # 0-based: event 6 holds frame 5
    assert np.isclose(numbering.base or 0, 0)
