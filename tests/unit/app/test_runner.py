"""The replay runner's words: progress and summary lines."""

from __future__ import annotations

import io

from streamtomo.app.runner import Progress, RunSummary


def _summary(**changes: object) -> RunSummary:
    values: dict[str, object] = {
        "frames": 40,
        "projections": 20,
        "rejected": {},
        "seconds": 2.0,
        "last_frame_to_final_s": 0.025,
        "endpoint": "http://127.0.0.1:1",
        "domain": "/d.h5",
    }
    values.update(changes)
    return RunSummary(**values)  # type: ignore[arg-type]


def test_progress_says_extra_frames_instead_of_more_than_all() -> None:
    progress = Progress(462, stream=io.StringIO())
    assert progress.frames_text(120) == "120/462 frames"
    assert progress.frames_text(463) == "463 frames (462 expected, 1 extra)"
    assert Progress(None, stream=io.StringIO()).frames_text(3201) == "3201 frames"


def test_summary_names_reasons_and_leaves_out_a_latency_it_does_not_have() -> None:
    text = _summary(rejected={"unknown_angle": 3, "duplicate_frame": 1}).describe()
    assert text == (
        "40 frames (20 projections, 4 rejected: 1 duplicate_frame, 3 unknown_angle) in 2.00 s, "
        "20.0 frames/s; last frame to final slices 25 ms"
    )
    empty = _summary(projections=0, last_frame_to_final_s=None, state="failed", reason="no projection")
    assert "last frame to final slices" not in empty.describe()
    assert empty.failed
    assert _summary(projections=0, state="finished").failed  # nothing reduced is not a success
    assert not _summary().failed


def test_summary_says_how_many_pixels_were_repaired_and_why_slots_may_be_empty() -> None:
    """Repairs showed only in /entry/status; empty slots from rejected frames pointed at
    the angle grid parameters alone."""
    text = _summary(pixels_repaired=512, rejected={"dead_frame": 1}, missing_angles=1, angle_slots=20).describe()
    assert "; 512 pixels repaired" in text
    assert "; 1 of 20 angle slots empty (rejected frames, or see the angle grid parameters)" in text
    assert "pixels repaired" not in _summary().describe()
    assert "(see the angle grid parameters)" in _summary(missing_angles=1, angle_slots=20).describe()


def test_summary_names_the_frames_that_never_came() -> None:
    """A scan that finished without some of its frames read like a whole one."""
    assert "lost" not in _summary().describe()
    assert "; 1 frame lost (never reached the reducer: 7)" in _summary(lost_frames=[(7, 7)]).describe()
    many = _summary(lost_frames=[(0, 1), (5, 5), (9, 12), (20, 20), (30, 31), (40, 40)]).describe()
    assert "; 11 frames lost (never reached the reducer: 0-1, 5, 9-12, 20 and 2 ranges more)" in many


def test_summary_rate_leaves_out_the_end_of_scan_and_says_it_apart() -> None:
    """A 2 s stream followed by a 60 s volume read as 40 frames in 62 s, 0.6 frames/s."""
    text = _summary(end_of_scan_s=60.0).describe()
    assert " in 2.00 s, 20.0 frames/s;" in text
    assert text.endswith("; then 60.00 s to the end of the scan (volume, final file)")
    assert "end of the scan" not in _summary(end_of_scan_s=0.01).describe()


def test_positions_left_empty_under_a_doubted_frame_base_are_not_blamed_on_the_reducer() -> None:
    """frame_base 0 for a detector that counts from 1: position 0 stays empty with every
    frame sent, and the summary said it "never reached the reducer"."""
    text = _summary(lost_frames=[(0, 0)], notices={"frame_base_suspect": 1}).describe()
    assert "never reached the reducer" not in text
    assert "; 1 frame position never filled (0): lost, or the frames are numbered from another frame_base" in text


def test_a_gap_after_the_first_frame_is_lost_whatever_the_frame_base() -> None:
    """A wrong base explains the leading empty positions only: frames 20-29 dropped in
    the same scan were called possibly no loss too."""
    text = _summary(lost_frames=[(0, 0), (20, 29)], notices={"frame_base_suspect": 1}).describe()
    assert "; 1 frame position never filled (0): lost, or the frames are numbered from another frame_base" in text
    assert "; 10 frames lost (never reached the reducer: 20-29)" in text
    # A gap alone, the base doubted for another reason: lost.
    gap = _summary(lost_frames=[(20, 29)], notices={"frame_base_suspect": 1}).describe()
    assert "; 10 frames lost (never reached the reducer: 20-29)" in gap and "never filled" not in gap
