"""Real beamline conventions, through the worker adapter and the reducer core (no services).

Synthetic dranspose events laid out as the ingesters make them (event 0: the headers,
then one event per trigger, then the ends), with the conventions of real scans:
1-based detector frame numbers (the Orca at MAX IV DanMAX), a PandA whose 32-bit
encoder counts 11930463 per degree and wraps once per turn, a -50 degree offset.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
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


def run_scan(
    scan_events: Sequence[EventData],
    values: dict[str, object],
    workers: int = 1,
    header_to: Sequence[int] | None = None,
    broadcast: Collection[int] = (),
) -> LiveScan:
    """Events to workers as dranspose routes them, results to the reducer's core.

    With several workers each event goes to one of them, the headers (event 0) and the
    ends to all, as ``replay`` (it broadcasts the first event) and a deployment's
    ``all_wrap`` sequence do. ``header_to`` limits the headers to those workers;
    ``broadcast``: events that also go to all (a deployment's darks and flats).
    """
    params = parameters(values)
    scan = LiveScan(PipelineConfig.from_mapping(values))
    pool = [TomoWorker(parameters=params, state=SimpleNamespace(name=f"w{i}")) for i in range(workers)]
    last = len(scan_events) - 1
    for event in scan_events:
        number = int(event.event_number)
        if number == 0:
            targets = pool if header_to is None else [pool[i] for i in header_to]
        else:
            targets = pool if number == last or number in broadcast else [pool[(number * 7) % workers]]
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


# -- 2, 3. the PandA encoder ------------------------------------------------------------

COUNTS_PER_DEGREE = 11930463.0  # DanMAX: 2^32 counts are 360 degrees (and 0.00005)
OFFSET = -50.0
RANGE = 2**32
DANMAX_FIELDS = [
    TS,
    pcap.PcapField("INENC2.VAL", "double", "Mean", 1.0, 0.0, ""),
    pcap.PcapField("INENC2.VAL", "double", "Min", 1.0, 0.0, ""),
    pcap.PcapField("INENC2.VAL", "double", "Max", 1.0, 0.0, ""),
    pcap.PcapField("SFP3_SYNC_IN.POS1", "double", "Mean", 1.0, 0.0, ""),
    pcap.PcapField("PCAP.BITS0", "uint32", "Value"),
]


def wrapped(angle_deg: np.ndarray) -> np.ndarray:
    """The signed 32-bit counter at these angles."""
    counts = np.rint((angle_deg - OFFSET) * COUNTS_PER_DEGREE).astype(np.int64)
    return (counts + 2**31) % RANGE - 2**31


def danmax_line(number: int, angle_deg: float, exposure_deg: float = 0.5) -> bytes:
    """The PandA's capture over one exposure centred on ``angle_deg``: Mean, Min and
    Max of the wrapping counter, as the PandA computes them."""
    counts = wrapped(angle_deg + np.linspace(-exposure_deg / 2, exposure_deg / 2, 201))
    mean, low, high = float(counts.mean()), int(counts.min()), int(counts.max())
    return pcap.encode_pcap_values([number * 0.1, mean, low, high, mean, 0])


def danmax_scan(angles: Sequence[float], encoder_fields: Sequence[pcap.PcapField] = DANMAX_FIELDS) -> list[EventData]:
    """Darks and flats (stage parked at the first angle), then projections at ``angles``."""
    frames = list(synthetic_scan(N_DARKS, N_FLATS, len(angles), rows=4, cols=32))
    frames = [Frame(f.index + 1, f.key, f.data, f.angle_deg) for f in frames]  # the Orca counts from 1
    at = [angles[0]] * (N_DARKS + N_FLATS) + list(angles)
    angle = [pcap.encode_pcap_header(encoder_fields, "2024-11-05T10:00:00.000Z")]
    angle += [danmax_line(n, a) for n, a in enumerate(at, start=1)]
    angle.append(pcap.encode_pcap_end(len(at)))
    return events(detector_events(frames), angle)


def danmax_config(n: int, **values: object) -> dict[str, object]:
    base = counts_config(
        n_projections=n,
        angle_stream="angle",
        encoder_field="INENC2.VAL.Mean",
        counts_per_degree=COUNTS_PER_DEGREE,
        encoder_offset=OFFSET,
    )
    base.update(values)
    return base


# ``ascanct tom_ry`` in 18-degree steps through the counter's wrap (at 130 degrees with
# the -50 offset): 152.8, 170.8 and 188.8 lie past it.
STEPPED = [8.8 + 18.0 * i for i in range(11)]


@pytest.mark.parametrize("workers", [1, 3])
def test_angles_continue_across_the_encoder_wrap(workers: int) -> None:
    assert wrapped(np.array(STEPPED[-3:])).max() < 0  # the counter did wrap
    config = danmax_config(len(STEPPED), angle_start=8.8, angle_range=18.0 * len(STEPPED))
    scan = run_scan(danmax_scan(STEPPED), config, workers)
    assert scan.rejected == {}
    assert scan.state == "finished" and scan.status()["projections"] == len(STEPPED)
    assert scan.sinogram is not None
    np.testing.assert_allclose(scan.sinogram.angles(), STEPPED, atol=1e-3)


def test_an_exposure_that_straddles_the_wrap_is_rejected_with_its_reason() -> None:
    angles = [4.0 + 18.0 * i for i in range(11)]  # 130.0: the counter wraps mid-exposure
    scan = run_scan(danmax_scan(angles), danmax_config(len(angles), angle_start=4.0, angle_range=198.0), 2)
    assert scan.rejected == {"encoder_wrapped": 1}
    assert scan.sinogram is not None
    assert list(scan.sinogram.missing_slots()) == [7]
    filled = scan.sinogram.filled_slots()
    np.testing.assert_allclose(scan.sinogram.angles()[filled], np.array(angles)[filled], atol=1e-3)


def test_the_wrap_unwraps_to_the_turn_of_the_angle_grid() -> None:
    values = {"INENC2.VAL.Mean": float(wrapped(np.array([188.8]))[0])}
    raw = pcap.angle_from_values(values, "INENC2.VAL.Mean", COUNTS_PER_DEGREE, OFFSET)
    assert raw == pytest.approx(188.8 - 360.0, abs=1e-3)  # what a non-wrapping reading says
    unwrapped = pcap.angle_from_values(values, "INENC2.VAL.Mean", COUNTS_PER_DEGREE, OFFSET, 32, near_deg=98.8)
    assert unwrapped == pytest.approx(188.8, abs=1e-3)
    # encoder_bits 0: no wrap, the reading as it is.
    assert pcap.angle_from_values(values, "INENC2.VAL.Mean", COUNTS_PER_DEGREE, OFFSET, 0, 98.8) == raw


def test_a_missing_encoder_field_rejects_every_frame_and_names_the_captured_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The default INENC1.VAL.Mean, which this PandA does not capture.
    config = danmax_config(len(STEPPED), angle_start=8.8, angle_range=198.0, encoder_field="INENC1.VAL.Mean")
    scan = run_scan(danmax_scan(STEPPED), config, 2)
    assert scan.rejected == {"encoder_field_missing": N_DARKS + N_FLATS + len(STEPPED)}
    assert scan.state == "failed"
    warning = next(r.getMessage() for r in caplog.records if "encoder_field_missing" in r.getMessage())
    assert "'INENC1.VAL.Mean' is not in the PandA header" in warning
    assert "INENC2.VAL.Mean, INENC2.VAL.Min, INENC2.VAL.Max, SFP3_SYNC_IN.POS1.Mean" in warning


def test_a_worker_without_the_pandas_header_rejects_projections_instead_of_guessing() -> None:
    # Worker 0 saw the header, the others did not: their projections are refused with a
    # reason, none gets a nominal angle.
    config = danmax_config(len(STEPPED), angle_start=8.8, angle_range=198.0)
    scan = run_scan(danmax_scan(STEPPED), config, 3, header_to=[0])
    assert set(scan.rejected) == {"pcap_header_missing"}
    assert scan.counts.get("nominal_angles", 0) == 0
    assert scan.status()["projections"] + scan.rejected["pcap_header_missing"] == len(STEPPED)


def test_a_projection_without_its_angle_is_rejected_when_an_angle_stream_is_configured() -> None:
    scan_events = danmax_scan(STEPPED)
    gap = scan_events[N_DARKS + N_FLATS + 3]  # the 3rd projection's event loses its angle
    del gap.streams[StreamName("angle")]
    scan = run_scan(scan_events, danmax_config(len(STEPPED), angle_start=8.8, angle_range=198.0))
    assert scan.rejected == {"missing_angle": 1}
    assert scan.counts.get("nominal_angles", 0) == 0


# -- 10. angle grids --------------------------------------------------------------------

INCLUSIVE = [-88.2 + 2.0 * i for i in range(91)]  # both ends: 182 degrees of grid


def test_an_inclusive_scan_fits_its_grid_with_angle_step() -> None:
    config = danmax_config(len(INCLUSIVE), angle_start=-88.2, angle_step=2.0)
    scan = run_scan(danmax_scan(INCLUSIVE), config, 2)
    assert scan.rejected == {}
    assert scan.sinogram is not None and scan.sinogram.missing_slots().size == 0
    np.testing.assert_allclose(scan.sinogram.angles(), INCLUSIVE, atol=1e-3)


def test_an_angle_off_the_grid_is_reported_with_the_grid_and_the_measured_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The natural angle_range=180 gives a step of 180/91: the last frames miss their slots.
    scan = run_scan(danmax_scan(INCLUSIVE), danmax_config(len(INCLUSIVE), angle_start=-88.2), 1)
    assert scan.rejected.get("unknown_angle", 0) > 0
    warning = next(r.getMessage() for r in caplog.records if "unknown_angle" in r.getMessage())
    assert "the grid of 91 angles from -88.2 deg in steps of 1.97802 deg" in warning
    assert "the measured angles so far step by 2 deg: set angle_step=2" in warning


@pytest.mark.parametrize("workers", [1, 2])
def test_a_finite_angle_far_off_the_grid_is_rejected_and_the_scan_goes_on(workers: int) -> None:
    """A PandA that prints scaled degrees (counts_per_degree 1, no wrap) and one garbled
    value, 1e308: finite, so the worker takes it, but (1e308 - start) / 0.5 deg is
    infinite. It is rejected as unknown_angle and every other frame finds its slot (it
    used to raise OverflowError in front of every later frame, and the scan never ended)."""
    angles = [0.5 * i for i in range(20)]
    scan_events = danmax_scan(angles)
    bad = N_DARKS + N_FLATS + 6  # the PandA's line for the sixth projection (line 0 is the header)
    scan_events[bad].streams[StreamName("angle")].frames[0] = pcap.encode_pcap_values(
        [bad * 0.1, 1e308, 1e308, 1e308, 1e308, 0]
    )
    values = danmax_config(
        len(angles), counts_per_degree=1.0, encoder_offset=0.0, encoder_bits=0, angle_start=0.0, angle_range=10.0
    )
    scaled = [pcap.encode_pcap_header(DANMAX_FIELDS, "2024-11-05T10:00:00.000Z")]
    for number, event in enumerate(scan_events[1:-1], start=1):  # the other lines in degrees, not counts
        if number != bad:
            at = angles[0] if number <= N_DARKS + N_FLATS else angles[number - N_DARKS - N_FLATS - 1]
            event.streams[StreamName("angle")].frames[0] = pcap.encode_pcap_values([number * 0.1, at, at, at, at, 0])
    scan_events[0].streams[StreamName("angle")].frames[0] = scaled[0]
    scan = run_scan(scan_events, values, workers)
    assert scan.state == "finished"
    # The grid spans 10 degrees of the half turn: the scan says so (a notice, no frame's).
    assert scan.rejected == {"unknown_angle": 1, "limited_angle_coverage": 1}
    assert scan.sinogram is not None
    assert scan.sinogram.missing_slots().tolist() == [5]
    np.testing.assert_allclose(np.delete(scan.sinogram.angles(), 5), np.delete(angles, 5), atol=1e-6)


def test_the_endpoint_of_a_full_turn_is_averaged_into_the_first_slot() -> None:
    # 5, 15, ..., 365 degrees through the wrapping encoder (no exposure straddles its
    # wrap at 130): 37 frames, 36 slots.
    turn = [5.0 + 10.0 * i for i in range(37)]
    config = danmax_config(len(turn), angle_start=5.0, angle_step=10.0)
    assert PipelineConfig.from_mapping(config).angle_slots() == 36
    scan = run_scan(danmax_scan(turn), config, 3)
    assert scan.rejected == {}
    assert scan.status()["projections"] == 37
    assert scan.sinogram is not None and scan.sinogram.grid.n == 36
    assert list(scan.sinogram.counts) == [2] + [1] * 35
    np.testing.assert_allclose(scan.sinogram.angles(), turn[:36], atol=1e-3)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"angle_step": -1.0}, "angle_step must be >= 0"),
        ({"angle_step": 2.0, "n_projections": 200}, r"spans 398 degrees: more than one turn"),
    ],
)
def test_angle_step_is_checked(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PipelineConfig.from_mapping(values)


# -- 11. frame layouts ------------------------------------------------------------------


def diad_order_frames() -> tuple[list[Frame], list[Frame]]:
    """The same scan in the usual order and in DIAD's (flats, darks, projections, flats, darks)."""
    usual = list(synthetic_scan(3, 3, N_PROJ, rows=4, cols=32))
    darks, flats, projections = usual[:3], usual[3:6], usual[6:]
    diad = flats + darks + projections + flats + darks
    return usual, [Frame(i + 1, f.key, f.data, f.angle_deg) for i, f in enumerate(diad)]


def test_a_frame_layout_in_any_order_classifies_and_corrects_like_the_usual_one() -> None:
    usual, diad = diad_order_frames()
    reference = run_scan(events(detector_events(usual)), counts_config(n_darks_before=3, n_flats_before=3), 1)
    layout = counts_config(frame_layout="flat:3,dark:3,proj:36,flat:3,dark:3", n_projections=180)
    assert PipelineConfig.from_mapping(layout).n_projections == N_PROJ  # from the layout
    for workers in (1, 3):
        scan = run_scan(events(detector_events(diad)), layout, workers)
        assert scan.rejected == {}
        status = scan.status()
        assert (status["darks"], status["flats"], status["projections"]) == (6, 6, N_PROJ)
        assert scan.lost_frames() == []
        assert scan.counts.get("flats_interpolated") == 1  # the flats after were used
        assert scan.sinogram is not None and reference.sinogram is not None
        # Nominal angles count from the layout's first projection.
        np.testing.assert_allclose(scan.sinogram.angles(), reference.sinogram.angles())
        # The same darks and flats after as before: the same corrected sinogram.
        np.testing.assert_allclose(scan.sinogram.data, reference.sinogram.data, atol=1e-5)


def test_frame_layout_sets_the_expected_frames_and_the_first_projection() -> None:
    config = PipelineConfig.from_mapping({"frame_layout": "flat:50,dark:50,proj:3001,flat:50,dark:50"})
    assert (config.n_projections, config.expected_frames(), config.first_projection()) == (3001, 3201, 100)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("flat:2,dark:2", r"exactly one projection segment \('proj:N'\), found 0"),
        ("proj:3,flat:1,proj:4", "exactly one projection segment"),
        ("flat:2,proj:*", r"every segment needs a count >= 1, got projection:\*"),
        ("flat:0,proj:3", "every segment needs a count >= 1, got flat:0"),
        ("bright:2,proj:3", "unknown frame kind 'bright'"),
        ("flat:two,proj:3", "count must be an integer"),
    ],
)
def test_a_bad_frame_layout_is_refused_with_a_message(layout: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PipelineConfig.from_mapping({"frame_layout": layout})


def test_frame_layout_needs_the_counts_rule() -> None:
    with pytest.raises(ValueError, match="needs kind_rule 'counts'"):
        PipelineConfig.from_mapping({"frame_layout": "dark:1,proj:3", "kind_rule": "header"})
