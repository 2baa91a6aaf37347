"""A stream that sends a message too many or too few, or values that are no angles,
is counted and named, never silently misplaced (a review reproduced each case as a
finished scan with ``rejected {}`` and projections at their neighbours' angles).

The detector's frames carry numbers, so its own losses and extras harm nothing and
are not called faults of the angles; the PandA's rows carry none, so its extras and
losses shift every later frame, and the scan's reason says so.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.formats import pcap
from streamtomo.pipeline.scan import Frame
from streamtomo.pipeline.streaming.admission import describe_lost
from streamtomo.pipeline.streaming.live_scan import LiveScan
from streamtomo.workers.tomo_worker import TomoWorker
from tests.support.stream_events import events_by_stream
from tests.unit.workers.test_beamline_conventions import (
    DANMAX_FIELDS,
    danmax_config,
    danmax_line,
    danmax_scan,
    detector_events,
    events,
    parameters,
    run_scan,
    synthetic_scan,
)
from tests.unit.workers.test_stream_alignment import ANGLES, FIRST, config, split

OUT_OF_STEP = "went out of step"


def _slots_hold_their_own_projection(scan: object, clean: object) -> list[int]:
    """Slots whose data is another slot's projection of the clean scan."""
    a, b = scan.sinogram.by_angle, clean.sinogram.by_angle  # type: ignore[attr-defined]
    wrong = []
    for i in np.flatnonzero(scan.sinogram.counts > 0):  # type: ignore[attr-defined]
        nearest = int(np.argmin([np.abs(a[i] - b[j]).mean() for j in range(b.shape[0])]))
        if nearest != i:
            wrong.append(int(i))
    return wrong


@pytest.mark.parametrize("workers", [1, 3])
def test_a_pandas_double_trigger_is_counted_and_named(workers: int) -> None:
    detector, angle = split(danmax_scan(ANGLES))
    angle.insert(FIRST + 11, angle[FIRST + 10])
    scan = run_scan(events_by_stream(detector, angle), config(), workers)
    assert scan.rejected == {"angle_stream_out_of_step": 1}
    assert OUT_OF_STEP in scan.reason and "check_nominal_angles=true" in scan.reason


@pytest.mark.parametrize(
    ("header", "end", "sign"),
    [
        ({}, "Driver data overrun", "pcap_capture_incomplete"),
        ({"missed": 1}, "Disarmed", "pcap_missed_samples"),
    ],
)
def test_rows_the_pandas_says_it_lost_are_counted_and_named(header: dict[str, int], end: str, sign: str) -> None:
    detector, angle = split(danmax_scan(ANGLES))
    angle[0] = pcap.encode_pcap_header(DANMAX_FIELDS, "2024-11-05T10:00:00.000Z", **header)
    del angle[FIRST + 10]  # a row lost
    angle[-1] = pcap.encode_pcap_end(len(angle) - 2, end)
    scan = run_scan(events_by_stream(detector, angle), config(), 2)
    assert scan.rejected[sign] == 1 and scan.rejected["angle_stream_out_of_step"] == 1
    assert OUT_OF_STEP in scan.reason and sign in scan.reason


@pytest.mark.parametrize("rearm", [False, True], ids=["header repeated", "END and header: re-armed"])
def test_a_pandas_header_on_top_of_its_rows_is_counted_and_named(rearm: bool) -> None:
    detector, angle = split(danmax_scan(ANGLES))
    angle[FIRST + 10 : FIRST + 10] = [pcap.encode_pcap_end(FIRST + 9), angle[0]] if rearm else [angle[0]]
    scan = run_scan(events_by_stream(detector, angle), config(), 2)
    assert scan.rejected["pcap_header_mid_scan"] == 1 and scan.rejected["angle_stream_out_of_step"] == 1
    assert OUT_OF_STEP in scan.reason


@pytest.mark.parametrize("workers", [1, 3, 8])
@pytest.mark.parametrize("event", [FIRST, FIRST + 1], ids=["at the first projection", "at the second"])
@pytest.mark.parametrize("rearm", [False, True], ids=["header repeated", "END and header: re-armed"])
def test_with_nominal_checks_every_frame_finds_its_row_after_a_pandas_header_on_top(
    rearm: bool, event: int, workers: int
) -> None:
    """A worker that had read no PandA row yet took the header for its capture's start
    (8 workers: nothing counted, that frame refused as missing_angle), an END in an
    image's event refused its frame, and the flats' rows at the first projection's angle
    made its row look ambiguous: each frame is now found by its angle."""
    detector, angle = split(danmax_scan(ANGLES))
    angle[event:event] = [pcap.encode_pcap_end(event - 1), angle[0]] if rearm else [angle[0]]
    checked = {**config(), "check_nominal_angles": "true"}
    scan = run_scan(events_by_stream(detector, angle), checked, workers)
    assert scan.rejected == {"pcap_header_mid_scan": 1, "angle_stream_out_of_step": 1}
    assert scan.sinogram is not None and list(scan.sinogram.missing_slots()) == []
    clean = run_scan(danmax_scan(ANGLES), checked, workers)
    assert _slots_hold_their_own_projection(scan, clean) == []


@pytest.mark.parametrize("checked", [False, True], ids=["plain", "check_nominal_angles"])
@pytest.mark.parametrize("damage", ["double trigger, detector message dropped", "row lost, junk detector message"])
def test_a_pandas_shift_beside_the_detectors_own_fault_is_counted(damage: str, checked: bool) -> None:
    """The detector's loss (or extra) made the streams end in the same direction as the
    PandA's own shift, and was taken as the explanation: 24 slots at their neighbours'
    angles and nothing counted (fuzz_streams.py --panda-shifts, round 1051). The
    PandA's count of rows against the scan's frames decides now."""
    detector, angle = split(danmax_scan(ANGLES))
    if damage.startswith("double trigger"):
        del detector[FIRST + 5]
        angle.insert(FIRST + 21, angle[FIRST + 20])
    else:
        detector.insert(FIRST + 5, [b"\xff junk"])
        del angle[FIRST + 20]
    values = {**config(), "check_nominal_angles": checked}
    scan = run_scan(events_by_stream(detector, angle), values, 2)
    assert scan.rejected["angle_stream_out_of_step"] == 1 and OUT_OF_STEP in scan.reason
    assert "check_nominal_angles matched" in scan.reason if checked else "neighbour's angle" in scan.reason
    if checked:
        assert _slots_hold_their_own_projection(scan, run_scan(danmax_scan(ANGLES), values, 2)) == []


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize(
    ("shift", "lost"),
    [
        ("header repeated", [5]),
        ("re-armed", [5]),
        ("row lost", [5, 20]),  # 20: its row is gone
        ("unreadable row moved by a double trigger", [5, 20]),  # 20: its row is unreadable
    ],
)
def test_with_nominal_checks_a_joined_frame_whose_row_is_missing_is_found_by_angle(
    shift: str, lost: list[int], workers: int
) -> None:
    """A dropped detector message makes frames join their rows by number; where that
    row's event brought none it could read (a header, an END, a row the PandA lost, or
    an unreadable one a shift moved there) the frame was refused as missing_angle or
    no_angle_row, though its own row was one or two events away: the nominal search
    (fuzz_streams.py --panda-shifts: 350 such frames in 300 rounds) finds it now."""
    detector, angle = split(danmax_scan(ANGLES))
    del detector[FIRST + 5]
    at = FIRST + 20
    if shift == "header repeated":
        angle.insert(at, angle[0])
    elif shift == "re-armed":
        angle[at:at] = [pcap.encode_pcap_end(at - 1), angle[0]]
    elif shift == "row lost":
        del angle[at]  # projection 20's row
    else:
        angle[at] = b" 1 nan 3 4\n"  # projection 20's row, unreadable
        angle.insert(FIRST + 11, angle[FIRST + 10])  # a double trigger at projection 10
    checked = {**config(), "check_nominal_angles": "true"}
    scan = run_scan(events_by_stream(detector, angle), checked, workers)
    assert scan.sinogram is not None and list(scan.sinogram.missing_slots()) == lost
    assert scan.rejected["angle_stream_out_of_step"] == 1
    assert _slots_hold_their_own_projection(scan, run_scan(danmax_scan(ANGLES), checked, workers)) == []


def test_a_corrupt_frame_number_far_past_the_layout_is_no_pandas_shift() -> None:
    """One bit flipped in a frame number: the frame lies far past the layout, and the
    scan's frame count taken up to it made the PandA a million rows short."""
    detector, angle = split(danmax_scan(ANGLES))
    head = json.loads(detector[FIRST + 10][0])
    head["frame"] += 1 << 20
    detector[FIRST + 10] = [json.dumps(head).encode(), *detector[FIRST + 10][1:]]
    scan = run_scan(events_by_stream(detector, angle), config(), 2)
    # the reason says only that its position stayed empty (no PandA shift)
    assert scan.rejected == {"past_layout": 1} and scan.reason == "1 frame lost (never reached the reducer: 14)"


@pytest.mark.parametrize("change", [{"shape": [8, 32]}, {"type": "complex64"}], ids=["shape", "dtype"])
def test_a_bad_detector_copy_beside_a_clean_panda_is_no_shift(change: dict[str, object]) -> None:
    """A refused copy is a detector message too many, which nothing counted as the
    detector's own: the scan said the PandA had gone out of step."""
    detector, angle = split(danmax_scan(ANGLES))
    good = detector[FIRST + 20]
    head = json.loads(good[0])
    head.update(change)
    detector.insert(FIRST + 21, [json.dumps(head).encode(), good[1] * (2 if "shape" in change else 4)])
    scan = run_scan(events_by_stream(detector, angle), config(), 2)
    assert set(scan.rejected) == {"wrong_shape" if "shape" in change else "wrong_dtype"} and scan.reason == ""


@pytest.mark.parametrize("drop", ["an image", "the series end"])
def test_the_detectors_own_lost_messages_are_no_fault_of_the_angles(drop: str) -> None:
    detector, angle = split(danmax_scan(ANGLES))
    del detector[FIRST + 10 if drop == "an image" else -1]
    scan = run_scan(events_by_stream(detector, angle), config(), 2)
    assert "angle_stream_out_of_step" not in scan.rejected and OUT_OF_STEP not in scan.reason
    clean = run_scan(danmax_scan(ANGLES), config(), 2)
    assert _slots_hold_their_own_projection(scan, clean) == []


def test_a_detector_header_mid_scan_keeps_every_frame_at_its_position() -> None:
    """'auto' took the header for a new series and the next image's number as the base:
    every later frame one position off, a dark counted as a lost frame, nothing said."""
    detector, angle = split(danmax_scan(ANGLES))
    detector.insert(FIRST + 10, detector[0])
    scan = run_scan(events_by_stream(detector, angle), config(), 2)
    assert scan.rejected == {"stins_header_mid_scan": 1} and scan.lost_frames() == []
    clean = run_scan(danmax_scan(ANGLES), config(), 2)
    assert _slots_hold_their_own_projection(scan, clean) == []


def test_a_second_series_whose_numbers_repeat_is_named() -> None:
    detector, angle = split(danmax_scan(ANGLES))
    k = FIRST + 10
    restarted = []
    for j, parts in enumerate(detector[k:-1]):
        head = json.loads(parts[0])
        head["frame"] = j + 1
        restarted.append([json.dumps(head).encode(), *parts[1:]])
    scan = run_scan(events_by_stream([*detector[:k], detector[0], *restarted, detector[-1]], angle), config(), 2)
    # The restarted numbers come again on other exposures: no copies sent twice.
    assert scan.rejected["stins_header_mid_scan"] == 1 and scan.rejected["frame_number_repeated"] > 0
    assert "duplicate_frame" not in scan.rejected
    assert "started a new series in the middle of the scan" in scan.reason


@pytest.mark.parametrize("workers", [1, 3])
def test_an_unreadable_message_before_the_first_image_makes_base_0_suspect(workers: int) -> None:
    """The Orca counts from 1. An extra message that cannot be read came first (event 1),
    so its first image arrived in event 2: 'auto' took 0 as the base and put every
    frame one position off, and nothing said so when the scan's last frame was lost
    too (fuzz_streams.py --frame-base auto --seed 21, round 351: 85 slots wrong)."""
    detector, angle = split(danmax_scan(ANGLES))
    detector.insert(1, [b'{"htype": "image", "frame": '])  # cut short: no frame number to read
    detector.pop(-2)  # the last image lost: the end-of-scan sign (position 0 missing, one past there) is gone
    scan = run_scan(events_by_stream(detector, angle), config(), workers)
    assert scan.rejected["frame_base_suspect"] == 1  # in /entry/status, not only in a log
    assert "frame_base_suspect" in scan.reason
    fixed = run_scan(events_by_stream(detector, angle), {**config(), "frame_base": "1"}, workers)
    assert "frame_base_suspect" not in fixed.rejected and fixed.rejected["corrupt_frame"] == 1
    clean = run_scan(danmax_scan(ANGLES), config(), workers)
    assert _slots_hold_their_own_projection(fixed, clean) == []


def test_a_first_frame_number_that_no_detector_starts_from_is_named() -> None:
    """The Orca counts from 1: its first image lost, 'auto' took 2 as the base."""
    detector, angle = split(danmax_scan(ANGLES))
    del detector[1]
    scan = run_scan(events_by_stream(detector, angle), config(), 2)
    assert scan.rejected["frame_base_suspect"] == 1
    assert "frame_base_suspect" in scan.reason
    fixed = run_scan(events_by_stream(detector, angle), {**config(), "frame_base": "1"}, 2)
    assert fixed.rejected == {} and fixed.lost_frames() == [(0, 0)]


@pytest.mark.parametrize("workers", [1, 3])
def test_a_fixed_frame_base_below_the_detectors_first_number_is_named(workers: int) -> None:
    """frame_base 0 for the Orca, which counts from 1: every frame one position off (a
    dark taken for a flat, each projection joined to the next one's PandA row) and the
    scan finished with nothing said but one dropped_kind ("image_key 3 (invalid)")."""
    scan = run_scan(danmax_scan(ANGLES), {**config(), "frame_base": "0"}, workers)
    assert scan.rejected == {"frame_base_suspect": 1, "past_layout": 1}  # the last frame, one past the layout
    assert "frame_base 0 does not match" in scan.reason and "frame_base_suspect" in scan.reason
    right = run_scan(danmax_scan(ANGLES), {**config(), "frame_base": "1"}, workers)
    assert right.rejected == {} and right.reason == ""


def test_a_pandas_in_raw_mode_is_refused_for_a_mean() -> None:
    """In 'process: Raw' a Mean capture is the sum over the exposure: every angle wrong."""
    detector, angle = split(danmax_scan(ANGLES))
    angle[0] = pcap.encode_pcap_header(DANMAX_FIELDS, "2024-11-05T10:00:00.000Z", process="Raw")
    scan = run_scan(events_by_stream(detector, angle), config(), 2)
    assert scan.state == "failed" and scan.rejected == {"pcap_raw_mean": len(ANGLES)}
    assert "pcap_raw_mean" in scan.reason


def test_a_wrapping_mean_without_its_min_and_max_is_named_once() -> None:
    """Without Min and Max (DanMAX's SFP3_SYNC_IN.POS1.Mean) an exposure across the
    wrap cannot be seen: said once per scan, not per worker."""
    values = danmax_config(len(ANGLES), angle_start=0.0, angle_range=180.0, encoder_field="SFP3_SYNC_IN.POS1.Mean")
    scan = run_scan(danmax_scan(ANGLES), values, 3)
    assert scan.rejected == {"encoder_wrap_unchecked": 1}
    assert run_scan(danmax_scan(ANGLES), config(), 3).rejected == {}  # INENC2.VAL.Mean: Min and Max captured


@pytest.mark.parametrize(
    ("values", "reached"),
    [
        ({}, False),  # 1000 counts per degree: the wrap lies past two million degrees
        ({"counts_per_degree": 11930463, "encoder_offset": -50.0}, True),  # DanMAX: at 130 degrees
        ({"counts_per_degree": 11930463, "encoder_offset": -50.0, "angle_start": -40.0, "angle_range": 160.0}, False),
        ({"counts_per_degree": 11930463, "encoder_offset": -50.0, "angle_start": 400.0, "angle_range": 180.0}, True),
        ({"counts_per_degree": 11930463, "encoder_offset": -50.0, "encoder_bits": 0}, False),
    ],
)
def test_the_wrap_is_named_only_where_the_scan_reaches_it(values: dict[str, float], reached: bool) -> None:
    from streamtomo.pipeline.config import PipelineConfig
    from streamtomo.pipeline.formats.pcap_checks import wrap_within_scan

    assert wrap_within_scan(PipelineConfig.from_mapping({"n_projections": 45, **values})) is reached


def test_a_lost_detector_image_is_no_fault_of_the_angles_without_a_layout_either() -> None:
    """kind_rule 'header' has no layout to count lost frames by: the gaps in the frame
    numbers say it (the review saw angle_stream_out_of_step on a harmless loss)."""
    from dranspose.event import EventData

    from streamtomo.app.recordings import scan_to_internals, synthetic_scan

    frames = list(synthetic_scan(2, 2, 36, rows=4, cols=32))
    detector, angle = (list(s) for s in scan_to_internals(frames, image_key_in_header=True, counts_per_degree=1000.0))
    del detector[15]
    events = [
        EventData(
            event_number=n,
            streams={
                **(detector[n].streams if n < len(detector) else {}),
                **(angle[n].streams if n < len(angle) else {}),
            },
        )
        for n in range(max(len(detector), len(angle)))
    ]
    values = {
        "n_darks_before": 2,
        "n_flats_before": 2,
        "n_projections": 36,
        "angle_stream": "angle",
        "detector_stream": "detector",
        "counts_per_degree": 1000.0,
        "encoder_field": "INENC1.VAL.Mean",
        "kind_rule": "header",
    }
    scan = run_scan(events, values, 2)
    assert scan.rejected == {} and scan.reason == ""
    assert scan.status()["frames_rejected"] == 0


def test_notices_are_not_counted_as_frames_rejected() -> None:
    values = danmax_config(len(ANGLES), angle_start=0.0, angle_range=180.0, encoder_field="SFP3_SYNC_IN.POS1.Mean")
    scan = run_scan(danmax_scan(ANGLES), values, 2)
    assert scan.notices == {"encoder_wrap_unchecked": 1}
    assert scan.status()["frames_rejected"] == 0 and scan.status()["projections"] == len(ANGLES)


# -- a review's cases: the PandA's count and the frame base, neither blamed wrongly ----------


def test_a_right_fixed_base_whose_first_image_was_lost_is_not_called_wrong_outright(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An overrun frame the PandA triggered for too, and the first image lost: position 0
    missing and one past the layout there, as with a base too low. The notice advised
    frame_base 2, which put 45 slots at other frames' data. The same streams come from
    a base too low with a PandA double trigger (which went unsaid once the advice was
    dropped): both are named, neither advised outright."""
    full = danmax_scan([*ANGLES, 180.0])  # one frame past the layout, with its PandA row
    detector, angle = split(full)
    del detector[1]
    scan = run_scan(events_by_stream(detector, angle), {**config(), "frame_base": "1"}, 2)
    assert scan.rejected == {"past_layout": 1, "frame_base_suspect": 1}
    said = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("frame_base_suspect"))
    assert "either frame_base 1 is below" in said and "or the first image was lost" in said
    assert "Set frame_base 2" not in said


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("checked", [False, True], ids=["plain", "check_nominal_angles"])
@pytest.mark.parametrize("overrun", [0, 1, 3])
def test_a_low_fixed_base_is_named_with_an_overrun_too(overrun: int, checked: bool, workers: int) -> None:
    """frame_base 0 on the Orca, with frames past the layout the PandA triggered for: the
    base went unnamed and the PandA was blamed (a review of the first fix)."""
    scan_events = danmax_scan([*ANGLES, *(180.0 + 4 * k for k in range(overrun))])
    values = {**config(), "frame_base": "0", "check_nominal_angles": checked}
    scan = run_scan(scan_events, values, workers)
    assert scan.rejected["frame_base_suspect"] == 1 and "angle_stream_out_of_step" not in scan.rejected
    assert "frame_base 0 does not match" in scan.reason


def test_a_low_fixed_base_with_a_double_trigger_is_not_left_unsaid() -> None:
    detector, angle = split(danmax_scan(ANGLES))
    angle.insert(FIRST + 11, angle[FIRST + 10])
    scan = run_scan(events_by_stream(detector, angle), {**config(), "frame_base": "0"}, 2)
    assert scan.rejected["frame_base_suspect"] == 1 and scan.reason


def test_a_lost_pandas_row_beside_a_lost_last_image_is_counted() -> None:
    """The PandA's count matched the frames that came, as a scan stopped early does: 24
    slots at other frames' angles and nothing counted."""
    detector, angle = split(danmax_scan(ANGLES))
    del angle[FIRST + 20]
    del detector[-2]  # the last image
    scan = run_scan(events_by_stream(detector, angle), config(), 2)
    assert scan.rejected["angle_stream_out_of_step"] == 1 and OUT_OF_STEP in scan.reason


@pytest.mark.parametrize("workers", [1, 3])
def test_shifts_that_cancel_are_counted_where_the_search_ends_after_the_streams(workers: int) -> None:
    """References after the projections: every projection waits for them, and the
    nominal search resolves them only at the scan's end, after the scan was judged:
    the cancelling shifts (a double trigger, a lost row) went uncounted."""
    frames = list(synthetic_scan(2, 2, len(ANGLES), rows=4, cols=32))
    order = [*frames[4:], *frames[2:4], *frames[:2]]  # projections, flats, darks
    order = [Frame(i + 1, f.key, f.data, f.angle_deg) for i, f in enumerate(order)]
    at = [*ANGLES, *[ANGLES[-1]] * 4]
    angle = [pcap.encode_pcap_header(DANMAX_FIELDS, "2024-11-05T10:00:00.000Z")]
    angle += [danmax_line(n, x) for n, x in enumerate(at, start=1)] + [pcap.encode_pcap_end(len(at))]
    detector, angle = split(events(detector_events(order), angle))
    del angle[1 + 30]
    angle.insert(1 + 11, angle[1 + 10])
    n = len(ANGLES)
    values = danmax_config(n, angle_start=0.0, angle_range=180.0, frame_layout=f"proj:{n},flat:2,dark:2")
    scan = run_scan(events_by_stream(detector, angle), {**values, "check_nominal_angles": True}, workers)
    assert scan.rejected.get("angle_stream_out_of_step") == 1 and "in other events" in scan.reason


def test_with_no_pandas_stream_in_the_events_frames_are_refused_not_held() -> None:
    """check_nominal_angles sent every frame of events without the angle stream to the
    nominal search, which held their raw rows (half the sinogram again) to the end."""
    detector, _ = split(danmax_scan(ANGLES))
    values = {**config(), "check_nominal_angles": True}
    params = parameters(values)
    scan = LiveScan(PipelineConfig.from_mapping(values))
    worker = TomoWorker(parameters=params, state=SimpleNamespace(name="w0"))
    for event in events_by_stream(detector, []):
        result = worker.process_event(event, params)
        if result is not None:
            scan.add_result(result)
    assert scan.nominal.pending == 0 and scan.rejected["missing_angle"] == len(ANGLES)


@pytest.mark.parametrize("workers", [1, 3])
def test_a_scan_stopped_early_with_both_streams_is_in_step(workers: int) -> None:
    """40 of the layout's 45 projections, both streams ended together: the PandA's count
    against the layout called it out of step."""
    scan = run_scan(danmax_scan(ANGLES[:40]), config(), workers)
    # The last 20 degrees were never measured, which the scan says (a notice), and the
    # reason names the frames that never came; nothing more.
    assert scan.rejected == {"limited_angle_coverage": 1}
    assert scan.reason == describe_lost(scan.lost_frames()) and sum(b - a + 1 for a, b in scan.lost_frames()) == 5
    assert scan.sinogram is not None and list(scan.sinogram.missing_slots()) == list(range(40, 45))


def test_a_re_armed_capture_whose_final_end_never_came_is_judged_by_its_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The re-arm's END was the only one: the count said the PandA sent 35 messages
    fewer, when it had sent 2 more."""
    detector, angle = split(danmax_scan(ANGLES))
    at = FIRST + 10
    angle[at:at] = [pcap.encode_pcap_end(at - 1), angle[0]]
    angle.pop()  # no final END
    scan = run_scan(events_by_stream(detector, angle), config(), 1)
    assert scan.rejected["angle_stream_out_of_step"] == 1 and OUT_OF_STEP in scan.reason
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("angle_stream_out_of_step")]
    assert said and "fewer than the scan's" not in said[0] and "the PandA sent more messages" in said[0]


def test_an_overrun_whose_first_frame_was_lost_is_no_pandas_shift() -> None:
    detector, angle = split(danmax_scan([*ANGLES, 180.0, 184.0]))  # two frames past the layout
    del detector[-3]  # the first of them lost
    scan = run_scan(events_by_stream(detector, angle), config(), 1)
    assert scan.rejected == {"past_layout": 1} and scan.reason == ""


def test_shifts_that_cancel_are_counted_where_the_nominal_search_found_them() -> None:
    """A double trigger and a lost row: the PandA's count is right at its END, and
    check_nominal_angles repaired the frames between without a word."""
    detector, angle = split(danmax_scan(ANGLES))
    del angle[FIRST + 30]
    angle.insert(FIRST + 11, angle[FIRST + 10])
    values = {**config(), "check_nominal_angles": True}
    scan = run_scan(events_by_stream(detector, angle), values, 2)
    assert scan.rejected["angle_stream_out_of_step"] == 1 and "in other events" in scan.reason
    assert _slots_hold_their_own_projection(scan, run_scan(danmax_scan(ANGLES), values, 2)) == []
    placed = int(scan.sinogram.counts.astype(bool).sum()) if scan.sinogram is not None else 0
    assert 0 < scan.status()["angles_joined"] <= placed  # each frame counted once


def test_a_reference_row_at_a_projections_angle_is_no_sign_of_a_shift() -> None:
    """Projection 0's row unreadable, the flats' rows at its angle: the nominal search
    places it with theirs (the stage stood there), which is no row of another frame."""
    detector, angle = split(danmax_scan(ANGLES))
    angle[FIRST] = b" 1 nan 3 4\n"
    scan = run_scan(events_by_stream(detector, angle), {**config(), "check_nominal_angles": True}, 2)
    assert scan.rejected == {} and scan.reason == ""
    assert scan.sinogram is not None and list(scan.sinogram.missing_slots()) == []


@pytest.mark.parametrize("checked", [False, True], ids=["plain", "check_nominal_angles"])
def test_a_scan_stopped_one_frame_short_names_both_causes(checked: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Both streams one frame short of the layout look like a PandA that lost a row where
    the detector lost its last image: without check_nominal_angles the notice names both
    (it said the frames went out of step), with it the rows found where they belong
    settle it."""
    values = {**config(), "check_nominal_angles": checked}
    scan = run_scan(danmax_scan(ANGLES[:-1]), values, 2)
    if checked:
        assert scan.rejected == {} and scan.reason == describe_lost(scan.lost_frames())
        assert len(scan.lost_frames()) == 1
    else:
        said = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("angle_stream_out_of_step"))
        assert "either both streams stopped 1 frame(s) short of the layout" in said


def test_with_an_auto_base_in_doubt_the_streams_ends_blame_no_panda() -> None:
    """'auto', the first image lost, an overrun: the streams' ends, read with positions
    frame_base_suspect itself doubts, counted the PandA out of step too."""
    detector, angle = split(danmax_scan([*ANGLES, 180.0]))
    del detector[1]
    scan = run_scan(events_by_stream(detector, angle), {**config(), "frame_base": "auto"}, 2)
    assert scan.rejected["frame_base_suspect"] == 1 and "angle_stream_out_of_step" not in scan.rejected


@pytest.mark.parametrize("workers", [1, 3])
def test_a_frame_number_the_counter_repeats_on_another_exposure_is_named(workers: int) -> None:
    """The counter repeated a number mid-scan (no message lost or added): the second
    was counted as a duplicate_frame, every later frame (numbered one below its
    position) went to its neighbour's PandA row, and the scan 'finished' with no reason."""
    detector, angle = split(danmax_scan(ANGLES))
    k = FIRST + 10
    for parts in detector[k:-1]:
        head = json.loads(parts[0])
        head["frame"] -= 1
        parts[0] = json.dumps(head).encode()
    scan = run_scan(events_by_stream(detector, angle), config(), workers)
    assert scan.rejected["frame_number_repeated"] == 1 and "duplicate_frame" not in scan.rejected
    assert "repeated frame" in scan.reason and "(frame_number_repeated)" in scan.reason


@pytest.mark.parametrize("workers", [1, 3])
def test_a_frame_sent_twice_is_a_duplicate_and_nothing_more(workers: int) -> None:
    """The same image again (a resend: the same pixels) harms nothing: its number says
    where it belongs."""
    detector, angle = split(danmax_scan(ANGLES))
    k = FIRST + 10
    detector.insert(k + 1, list(detector[k]))
    scan = run_scan(events_by_stream(detector, angle), config(), workers)
    assert scan.rejected.get("duplicate_frame") == 1 and "frame_number_repeated" not in scan.rejected
    assert "repeated frame" not in scan.reason


def _counting_from_0(detector: list[list[bytes]]) -> list[list[bytes]]:
    """The scan from a detector that numbers its images from 0 (dranspose's recordings)."""
    out = []
    for parts in detector:
        head = json.loads(parts[0])
        if head.get("htype") == "image":
            head["frame"] -= 1
        out.append([json.dumps(head).encode(), *parts[1:]])
    return out


@pytest.mark.parametrize("workers", [1, 3])
def test_a_detector_counting_from_0_that_lost_its_first_image_is_named(
    workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    """frame_base 'auto' took 1 from the first image that came: every frame one
    position early, a flat filed as the last dark, every projection at its neighbour's
    angle, and nothing said (all 59 slots of a review's scan wrong). The pixels say it:
    that "dark" is as bright as the flats."""
    detector, angle = split(danmax_scan(ANGLES))
    detector = _counting_from_0(detector)
    del detector[1]  # image 0 (the first dark) never came
    scan = run_scan(events_by_stream(detector, angle), config(), workers)
    assert scan.rejected["frame_base_suspect"] == 1
    assert "as bright as the flats" in caplog.text  # the notice, logged once at WARNING
    assert "frame_base_suspect" in scan.reason
    fixed = run_scan(events_by_stream(detector, angle), {**config(), "frame_base": "0"}, workers)
    assert "frame_base_suspect" not in fixed.rejected and fixed.lost_frames() == [(0, 0)]


@pytest.mark.parametrize("workers", [1, 3])
def test_a_detector_stream_without_its_header_is_named_and_not_blamed_on_the_panda(workers: int) -> None:
    """Every frame was placed right, yet the reason said the PandA went out of step and
    projections may sit at a neighbour's angle: the header's absence explained it."""
    detector, angle = split(danmax_scan(ANGLES))
    del detector[0]  # the series' header never came: event 0 brings the first image
    scan = run_scan(events_by_stream(detector, angle), {**config(), "frame_base": "1"}, workers)
    assert scan.rejected == {"stins_header_missing": 1}
    assert OUT_OF_STEP not in scan.reason
    clean = run_scan(danmax_scan(ANGLES), config(), workers)
    assert _slots_hold_their_own_projection(scan, clean) == []


@pytest.mark.parametrize("workers", [1, 3])
def test_a_detector_message_of_an_unknown_type_is_a_notice_not_a_frame(workers: int) -> None:
    """A well-formed message with an htype of its own was refused as corrupt_frame and
    counted among the frames received (71 for a scan of 70 images)."""
    detector, angle = split(danmax_scan(ANGLES))
    k = FIRST + 10
    detector.insert(k, [json.dumps({"htype": "dheader-1.0", "msg_number": 999}).encode()])
    scan = run_scan(events_by_stream(detector, angle), config(), workers)
    assert scan.rejected == {"detector_message_unknown": 1}
    clean = run_scan(danmax_scan(ANGLES), config(), workers)
    assert scan.status()["frames_received"] == clean.status()["frames_received"]
    assert _slots_hold_their_own_projection(scan, clean) == []


@pytest.mark.parametrize("workers", [2, 3])
def test_a_projection_in_an_event_sent_to_every_worker_is_one_frame(workers: int) -> None:
    """A stream shifted by one message puts a projection in an event a deployment sends to
    every worker (the darks' and flats', the end): each worker's copy was counted a
    duplicate_frame, so status called a frame rejected that was used, and received more
    frames than the detector sent."""
    detector, angle = split(danmax_scan(ANGLES))
    plain = run_scan(events_by_stream(detector, angle), config(), workers)
    shared = run_scan(events_by_stream(detector, angle), config(), workers, broadcast={FIRST + 5, FIRST + 6})
    assert shared.rejected == plain.rejected == {}
    assert shared.status()["frames_received"] == plain.status()["frames_received"]
    assert shared.admission.counts["projection_copies"] == 2 * (workers - 1)
    got, want = shared.snapshot(), plain.snapshot()
    np.testing.assert_array_equal(got.sinogram, want.sinogram)
    assert got.slices_sum is not None and want.slices_sum is not None
    # Each worker summed the shared event: the reducer takes the extra sums out again.
    np.testing.assert_allclose(got.slices_sum * got.slices_weight, want.slices_sum * want.slices_weight, atol=1e-5)


@pytest.mark.parametrize("workers", [2, 3])
def test_a_reference_sent_twice_in_events_for_every_worker_is_one_duplicate(workers: int) -> None:
    """One dark message sent twice, both copies in events every worker gets: each worker's
    copy of the second was counted (3 duplicate_frame for one extra message)."""
    detector, angle = split(danmax_scan(ANGLES))
    detector.insert(1, detector[1])  # the first dark again
    scan = run_scan(events_by_stream(detector, angle), config(), workers, broadcast=set(range(1, FIRST)))
    assert scan.rejected.get("duplicate_frame") == 1, scan.rejected
    sent = sum(1 for parts in detector[1:-1] if parts)  # the images: header and end aside
    assert scan.status()["frames_received"] == sent
