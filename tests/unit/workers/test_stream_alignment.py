"""Issue 12.1 and 12.4: frames joined to their own PandA row, not to whatever row
shared their event; a PandA header in the middle of a capture changes nothing.

dranspose's ingester drops a STINS message that fails its own header check (one ERROR
line) and does not renumber: every later detector message moves one event earlier,
next to the PandA row of the frame before it. These tests lay events out exactly so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from dranspose.event import EventData
from dranspose.protocol import StreamName

from streamtomo.pipeline.formats import pcap
from tests.support.stream_events import events_by_stream
from tests.unit.workers.test_beamline_conventions import (
    DANMAX_FIELDS,
    N_DARKS,
    N_FLATS,
    danmax_config,
    danmax_line,
    danmax_scan,
    run_scan,
)

ANGLES = [4.0 * i for i in range(45)]  # 0 .. 176 degrees, one projection per 4 degrees
FIRST = N_DARKS + N_FLATS + 1  # the first projection's event


def config() -> dict[str, object]:
    return danmax_config(len(ANGLES), angle_start=0.0, angle_range=180.0)


def split(scan_events: list[EventData]) -> tuple[list[list[bytes]], list[bytes]]:
    detector = [[bytes(p) for p in e.streams[StreamName("detector")].frames] for e in scan_events]
    angle = [bytes(e.streams[StreamName("angle")].frames[0]) for e in scan_events]
    return detector, angle


@pytest.mark.parametrize("workers", [1, 3])
def test_a_dropped_detector_message_leaves_every_frame_at_its_own_angle(workers: int) -> None:
    detector, angle = split(danmax_scan(ANGLES))
    dropped = FIRST + 10  # projection 10 (at 40 degrees) never reaches the workers
    del detector[dropped]
    scan = run_scan(events_by_stream(detector, angle), config(), workers)
    assert scan.state == "finished"
    assert scan.sinogram is not None
    assert list(scan.sinogram.missing_slots()) == [10]
    filled = scan.sinogram.filled_slots()
    # Every frame in the slot of its own angle: the projections' data encode their angle
    # (synthetic_scan), so a frame at another frame's angle would show here too.
    np.testing.assert_allclose(scan.sinogram.angles()[filled], np.array(ANGLES)[filled], atol=1e-3)
    clean = run_scan(danmax_scan(ANGLES), config(), workers)
    assert clean.sinogram is not None
    np.testing.assert_allclose(scan.sinogram.by_angle[filled], clean.sinogram.by_angle[filled], atol=1e-5)
    assert scan.counts["angles_joined"] == scan.status()["angles_joined"] == len(ANGLES) - 11
    assert scan.lost_frames() == [(dropped - 1, dropped - 1)]
    assert scan.rejected == {}


def test_a_frame_whose_row_never_comes_is_rejected_with_its_reason() -> None:
    detector, angle = split(danmax_scan(ANGLES))
    del detector[FIRST + 10]
    del angle[-2]  # and the PandA's last row is missing too: the last frame has no angle
    scan = run_scan(events_by_stream(detector, angle), config(), 2)
    # The PandA sent a row fewer than the scan's frames, and nothing in its stream says
    # the one missing was its last: the scan says later frames may be off.
    assert scan.rejected == {"no_angle_row": 1, "angle_stream_out_of_step": 1}
    assert scan.sinogram is not None and list(scan.sinogram.missing_slots()) == [10, len(ANGLES) - 1]


def test_a_pandas_header_mid_capture_does_not_change_how_rows_are_read() -> None:
    detector, angle = split(danmax_scan(ANGLES))
    # The same fields in another order: read with it, INENC2.VAL.Mean would be PCAP.TS_TRIG.
    stray = pcap.encode_pcap_header(list(reversed(DANMAX_FIELDS)), "2024-11-05T10:00:01.000Z")
    event = FIRST + 5
    angle[event] = stray  # that event's row is lost (its frame: missing_angle), no more
    scan = run_scan(events_by_stream(detector, angle), config(), 1)
    assert scan.rejected == {"pcap_header_mid_scan": 1, "missing_angle": 1}
    # One frame arrived per detector event: the header is no frame (else a stream-stop
    # check would take the scan as complete with a frame still to come).
    assert scan.status()["frames_received"] == len(detector) - 2  # the detector's header and end
    assert scan.sinogram is not None
    assert list(scan.sinogram.missing_slots()) == [5]
    filled = scan.sinogram.filled_slots()
    np.testing.assert_allclose(scan.sinogram.angles()[filled], np.array(ANGLES)[filled], atol=1e-3)


@pytest.mark.parametrize("workers", [1, 3])
def test_an_extra_pandas_trigger_is_found_by_the_nominal_angles(workers: int) -> None:
    detector, angle = split(danmax_scan(ANGLES))
    extra = FIRST + 10
    angle.insert(extra + 1, angle[extra])  # a double trigger: projection 10's row twice
    scan = run_scan(events_by_stream(detector, angle), {**config(), "check_nominal_angles": True}, workers)
    # The fault is counted and named, with what repaired it.
    assert scan.rejected == {"angle_stream_out_of_step": 1}
    assert_repaired_by_the_nominal_angles(scan, workers)
    assert scan.status()["angles_joined"] == len(ANGLES) - 11


def assert_repaired_by_the_nominal_angles(scan: Any, workers: int) -> None:
    """Every projection in its own slot, as in the same scan without the fault."""
    assert scan.state == "finished"
    assert "check_nominal_angles matched each projection to the row with its angle" in scan.reason
    assert scan.sinogram is not None and scan.sinogram.missing_slots().size == 0
    np.testing.assert_allclose(scan.sinogram.angles(), ANGLES, atol=1e-3)
    clean = run_scan(danmax_scan(ANGLES), config(), workers)
    assert clean.sinogram is not None
    np.testing.assert_allclose(scan.sinogram.by_angle, clean.sinogram.by_angle, atol=1e-5)
    assert rel_diff(scan.slices(), clean.slices()) < 1e-4


def test_a_frame_whose_angle_no_row_has_is_rejected_as_angle_mismatch() -> None:
    detector, angle = split(danmax_scan(ANGLES))
    # Projection 20's row says 120 degrees (slot 30): no row near it has 80 degrees.
    angle[FIRST + 20] = danmax_line(FIRST + 20, 120.0)
    scan = run_scan(events_by_stream(detector, angle), {**config(), "check_nominal_angles": True}, 2)
    assert scan.rejected == {"angle_mismatch": 1}
    assert scan.sinogram is not None and list(scan.sinogram.missing_slots()) == [20]
    assert int(scan.sinogram.counts[30]) == 1


def rel_diff(a: object, b: object) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(np.abs(x - y).max() / np.abs(y).max())


def test_auto_frame_base_misled_by_a_malformed_first_image_says_so(caplog: pytest.LogCaptureFixture) -> None:
    detector, angle = split(danmax_scan(ANGLES))
    detector.insert(1, [b"\xff not a STINS message"])  # before the first image: every image one event later
    values = {**config(), "frame_base": "auto"}
    scan = run_scan(events_by_stream(detector, angle), values, 2)
    assert scan.rejected["frame_base_suspect"] == 1  # in /entry/status, not only in a log
    assert "frame_base_suspect" in scan.reason
    assert any("Set frame_base" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    fixed = run_scan(events_by_stream(detector, angle), {**values, "frame_base": "1"}, 2)
    assert fixed.rejected == {"corrupt_frame": 1}  # the junk: an extra message that explains the streams' ends
    assert fixed.sinogram is not None and fixed.sinogram.missing_slots().size == 0
    np.testing.assert_allclose(fixed.sinogram.angles(), ANGLES, atol=1e-3)


@pytest.mark.parametrize("workers", [1, 3])
def test_an_extra_pandas_header_is_found_by_the_nominal_angles(workers: int) -> None:
    detector, angle = split(danmax_scan(ANGLES))
    # A re-armed capture: a header on top of the rows. Every row after it comes one
    # event late, and the frame in the header's own event finds no row there.
    stray = pcap.encode_pcap_header(DANMAX_FIELDS, "2024-11-05T10:00:01.000Z")
    event = FIRST + 5
    angle.insert(event, stray)
    scan = run_scan(events_by_stream(detector, angle), {**config(), "check_nominal_angles": True}, workers)
    assert scan.rejected == {"pcap_header_mid_scan": 1, "angle_stream_out_of_step": 1}
    assert_repaired_by_the_nominal_angles(scan, workers)


def test_a_pandas_header_in_a_rows_place_still_loses_only_that_frame_with_nominal_angles() -> None:
    detector, angle = split(danmax_scan(ANGLES))
    event = FIRST + 5
    angle[event] = pcap.encode_pcap_header(DANMAX_FIELDS, "2024-11-05T10:00:01.000Z")  # the row is gone
    scan = run_scan(events_by_stream(detector, angle), {**config(), "check_nominal_angles": True}, 2)
    # No row nearby has frame 5's angle: it stays refused under the reason it came with.
    assert scan.rejected == {"pcap_header_mid_scan": 1, "missing_angle": 1}
    assert scan.sinogram is not None and list(scan.sinogram.missing_slots()) == [5]
    filled = scan.sinogram.filled_slots()
    np.testing.assert_allclose(scan.sinogram.angles()[filled], np.array(ANGLES)[filled], atol=1e-3)
