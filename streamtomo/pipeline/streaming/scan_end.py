"""The end of a scan: late references, exact weights, auto centre.

Once every frame arrived (or the stream ended), the live products become exactly the
filtered backprojection of the final sinogram: projections still waiting are
placed with whatever references exist, flats taken after the projections are
interpolated with those before, every slot gets its angular-interval weight, and
the ledger backfills whatever no partial sum brought.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import warnings
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

import numpy as np

from streamtomo.pipeline.correction.corrector import Corrector
from streamtomo.pipeline.correction.references import ReferenceSet
from streamtomo.pipeline.formats.pcap_checks import PandaCount, frames_and_came, panda_rows, pandas_count
from streamtomo.pipeline.reconstruction.backends.common import (
    AngularCoverageWarning,
    coverage_warnings_logged,
    warn_if_incomplete,
)
from streamtomo.pipeline.reconstruction.cor import auto_center
from streamtomo.pipeline.reconstruction.fbp import angular_weights
from streamtomo.pipeline.scan import ImageKey
from streamtomo.pipeline.streaming.admission import describe_lost
from streamtomo.pipeline.streaming.contributions import FrameKey

if TYPE_CHECKING:
    from streamtomo.pipeline.streaming.live_scan import LiveScan

logger = logging.getLogger(__name__)
MIN_PROJECTIONS_FOR_AUTO_CENTER = 8

# The most of a rejection's own words a failed scan's reason quotes.
MAX_CAUSE_CHARS = 400


def finish(scan: LiveScan, volume_follows: bool) -> None:
    """Everything arrived: apply late references, backfill, then say what is final."""
    scan.release_held()  # a scan too short for two frames to agree on the shape
    warn_if_base_looks_off(scan)
    say_if_frames_may_be_off(scan)
    for msg in scan.take_unjoined_by_angle():
        scan.reject(
            "no_angle_row",
            f"frame {msg.frame_index} arrived with another frame's PandA row and its own row {msg.angle_row} "
            "never came (the PandA stream ended first)",
            msg.frame_index,
        )
    refs = scan.references
    waiting = scan.take_waiting()
    # Whatever is still open is complete now; flats after the last projection are
    # interpolated with those before.
    if any(m.frame_index > (refs.open_first_index or 0) for m in waiting):
        refs.close_batch()
    refs.close_batch(scan_ended=True)
    unused = refs.tracker.darks_after_unused
    if unused:
        scan.admission.counts["darks_after_unused"] = unused
        logger.warning(
            "%d darks after the projections, none before, are not used: the flats were retaken mid-scan, and "
            "the projections are corrected %s (set dark frames before the projections)",
            unused,
            "with the darks kept from an earlier scan" if refs.tracker.darks_borrowed else "without darks",
        )
    for msg in waiting:
        applicable = refs.applicable(msg.frame_index)
        if applicable is None:
            scan.reject(
                "no_references", f"projection {msg.frame_index}: the scan had no flats", msg.frame_index, counted=True
            )
        elif msg.reference_version and not refs.knows(msg.reference_version):
            scan.reject_unknown_references(msg)
        else:
            scan.place(msg, applicable)
    scan.resolve_nominal(finishing=True)
    # Judged once every frame is placed: projections the nominal search resolves only at
    # the end (waiting for flats, or for rows past the last) showed shifts too.
    judge_stream_steps(scan)
    current = refs.current
    if current is not None and current.flat_after is not None and scan.ledger is not None:
        interpolate_flats(scan, current)
    if scan.ledger is not None:
        for index, _event in scan.ledger.take_orphan_partials():
            # A copy that never came here: an arrival of its own (counted once per frame,
            # as every rejection), not the rejection of the copy in use.
            scan.reject("orphan_partial", f"frame {index} is in a partial sum but its rows never came", index)
        if scan.ledger.tainted:
            # Sums hold frames the sinogram does not: the products are made again from
            # the sinogram, so that they are its filtered backprojection, exactly.
            logger.info("partial sums held frames that are in no sinogram slot: the live products are rebuilt")
            scan.rebuild_products()
    apply_angular_weights(scan)
    scan.reconcile(backfill=True)
    if scan.sinogram is not None:
        # Every projection is placed: the slots left empty read as zeros in the memory
        # itself from now on (the final file, the volume and readers take it as it is).
        scan.sinogram.zero_unfilled()
    if scan.state == "failed":
        return
    if scan.n_projections == 0:
        received = scan.admission.received
        counts = scan.admission.rejected
        rejected = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) or "none"
        # The cause of the most frequent rejection of frames (notices are no frame's), in
        # its own words (what to change), cut to what a status line holds.
        frames = [reason for reason in sorted(counts) if reason not in scan.admission.notice_reasons]
        most = max(frames, key=lambda reason: counts[reason], default="")
        cause = scan.admission.first_detail.get(most, "")
        if len(cause) > MAX_CAUSE_CHARS:
            cause = cause[: MAX_CAUSE_CHARS - 3] + "..."
        scan.state = "failed"
        scan.add_reason(
            f"no projection was reduced: {received} frames received, rejected: {rejected}"
            + (f" (the first {most}: {cause})" if cause else ""),
            first=True,
        )
        logger.warning("scan failed: %s", scan.reason)
        return
    note_angular_coverage(scan)
    if scan.config.center.strip() == "auto":
        resolve_auto_center(scan)
    say_lost_frames(scan)
    scan.state = "reconstructing" if volume_follows else "finished"


def say_lost_frames(scan: LiveScan) -> None:
    """Say in the reason how many frames never came: a scan ended by its sender's stop
    (``play`` after a stall, Ctrl-C) or by the controller once a dead worker was taken
    out finished with an empty reason, and only ``frames_lost`` told it from a whole one."""
    said = describe_lost(scan.lost_frames(), base_doubted="frame_base_suspect" in scan.admission.rejected)
    if said:
        scan.add_reason(said)


def warn_if_base_looks_off(scan: LiveScan) -> None:
    """Say so, with the fix, when the frame base looks off (:func:`base_off_notice`),
    instead of leaving a scan quietly off."""
    if scan.admission.rejected.get("frame_base_suspect"):
        return  # a worker said so already (one notice per scan)
    text = base_off_notice(
        scan.config.expected_frames(),
        scan.admission.seen | scan.angle_join.waiting_positions(),
        scan.config.fixed_frame_base(),
        scan.config.angle_stream,
        panda_rows(scan.panda_ends, scan.angle_join.rows.keys()),
    )
    if not text and scan.config.kind_rule == "counts":
        text = misfiled_references_notice(scan.reference_levels, scan.config.fixed_frame_base())
    if text:
        scan.admission.notice("frame_base_suspect", text)


def misfiled_references_notice(levels: Sequence[tuple[ImageKey, int, float]], fixed: int | None) -> str:
    """Why the darks and flats look filed under the wrong kind ('' where they do not).

    With kinds by position (kind_rule counts), a detector that counts from 0 and lost
    its first image looks to frame_base 'auto' like one that counts from 1: every frame
    one position early, the first flat taken for the last dark, and every projection
    at its neighbour's angle, with nothing in the counts to tell (a review found all
    59 slots wrong). Its pixels tell: that "dark" is as bright as the flats."""
    darks = [(index, level) for key, index, level in levels if key == ImageKey.DARK]
    flats = [(index, level) for key, index, level in levels if key == ImageKey.FLAT]
    if not darks or not flats:
        return ""
    dark, flat = statistics.median(v for _, v in darks), statistics.median(v for _, v in flats)
    if not flat > dark:
        return ""  # references that are unusable altogether say so themselves (unusable_references)
    middle = (dark + flat) / 2
    bright = [index for index, level in darks if level > middle]
    dim = [index for index, level in flats if level < middle]
    if not bright and not dim:
        return ""
    seen = "; ".join(
        part
        for part in (
            f"dark frame(s) {bright[:3]} as bright as the flats" if bright else "",
            f"flat frame(s) {dim[:3]} as dim as the darks" if dim else "",
        )
        if part
    )
    base = (
        "frame_base 'auto' took the first image's number as the scan's first"
        if fixed is None
        else (f"frame_base {fixed} may not be the detector's first frame number")
    )
    return (
        f"{seen}: the frames' kinds, so their positions and angles, may be off by one or more ({base}; a "
        "detector that counts from 0 and lost its first image looks like one that counts from 1). Check "
        "frame_base and replay the scan"
    )


def base_off_notice(
    expected: int | None, seen: Collection[int], fixed: int | None, angle_stream: str, panda_rows: int | None
) -> str:
    """Why the frame base looks off ('' where it does not). frame_base 'auto' trusts the
    earliest image, and a malformed or lost first image shifts it; a fixed frame_base
    below the detector's first number (0 for the Orca, which counts from 1) shifts
    every frame, darks taken for flats and each projection joined to the next one's
    PandA row (42 of 46 slots wrong in a DanMAX-like scan, and nothing said). The sign
    at the end: position 0 never came and the position one past the layout did.

    For a fixed base the PandA's rows (``panda_rows``) decide how sure that is: where
    the frames' positions run exactly ``first`` past them, the base is ``first`` too
    low. A right base whose first image was lost, with frames past the layout the
    PandA triggered for too, looks like a low base with a double trigger: then both
    are named (the advice to raise the base broke the first; the second went unsaid)."""
    if not expected or 0 in seen or expected not in seen:
        return ""
    sign = f"frame position 0 never came but position {expected} (one past the {expected} frames of the layout) did"
    if fixed is None:
        return (
            f"{sign}: the first image was probably lost or malformed and frame_base 'auto' took the next one's "
            "number as the start; every frame may be one position off. Set frame_base (1 for the Orca at DanMAX) "
            "and replay the scan"
        )
    first = min(position for position in seen if position >= 0)
    _, came = frames_and_came(expected, seen)
    if not angle_stream or (panda_rows is not None and came == panda_rows + first):
        return (
            f"{sign}: the detector probably numbers its frames from {fixed + first}, not from frame_base {fixed}, "
            f"and every frame is {first} position(s) off (its kind, its angle). Set frame_base {fixed + first} "
            "(or 'auto') and replay the scan"
        )
    rows = "no PandA rows" if panda_rows is None else f"the PandA's {panda_rows} rows"
    return (
        f"{sign}: either frame_base {fixed} is below the detector's first frame number and every frame is "
        f"{first} position(s) off (its kind, its angle), or the first image was lost and the detector sent frames "
        f"past the layout; {rows} fit both. Check the detector's first frame number (frame_base {fixed + first} if "
        "it is that) and replay the scan"
    )


def say_if_frames_may_be_off(scan: LiveScan) -> None:
    """The scan's reason says when frames may sit at other frames' positions, which
    counts alone left unsaid: frame_base 'auto' looked wrong (frame_base_suspect), or
    the detector started a new series in the middle of the scan and its numbers
    repeated (stins_header_mid_scan with duplicate_frame or frame_number_repeated), or
    its counter repeated a number on another exposure (frame_number_repeated: a frame
    goes to its PandA row, kind and slot by its number, so every later frame, numbered
    one below its position, sat at its neighbour's angle and the scan 'finished' with
    nothing said)."""
    rejected = scan.admission.rejected
    whys = []
    if rejected.get("frame_base_suspect"):
        fixed = scan.config.fixed_frame_base()
        found = "frame_base 'auto' found" if fixed is None else f"frame_base {fixed} does not match"
        fix = (
            "(the detector's first frame number: 1 for the Orca at DanMAX)"
            if fixed is None
            else "as frame_base_suspect says"
        )
        whys.append(
            f"{found} the detector's first frame number (frame_base_suspect): every frame may be one position "
            f"off; set frame_base {fix} and replay the scan"
        )
    repeated = [reason for reason in ("duplicate_frame", "frame_number_repeated") if rejected.get(reason)]
    if rejected.get("stins_header_mid_scan") and repeated:
        whys.append(
            "the detector started a new series in the middle of the scan and its frame numbers repeated "
            f"(stins_header_mid_scan, {', '.join(repeated)}): frames after it may sit at other frames' positions "
            "and angles; one series per scan"
        )
    elif scan.admission.repeated_numbers:
        frame, first, second = scan.admission.repeated_numbers[0]
        more = len(scan.admission.repeated_numbers) - 1
        whys.append(
            f"the detector's frame counter repeated frame {frame} on another exposure (events {first} and {second})"
            f"{f' and {more} more' if more else ''} (frame_number_repeated): frames after it carry numbers below "
            "their positions, and may sit at a neighbour's angle"
        )
    for why in whys:
        scan.add_reason(why)


# Signs from the PandA itself that its rows and the detector's frames went out of step.
PANDA_SIGNS = ("pcap_header_mid_scan", "pcap_missed_samples", "pcap_capture_incomplete")
# The detector's own extra messages (its frames carry numbers: these harm nothing).
DETECTOR_EXTRAS = (
    "duplicate_frame",
    "frame_number_repeated",
    "stins_header_mid_scan",
    "corrupt_frame",
    "detector_message_unknown",
)


def judge_stream_steps(scan: LiveScan) -> None:
    """Say whether the PandA's rows were paired with the wrong frames.

    The detector's frames carry numbers, so its own losses (frames lost) and extras
    (duplicates, bad copies, a header or junk in the middle) cost nothing: a frame
    goes to its own PandA row by number. The PandA's rows carry none, so an extra or
    missing row shifts every later frame onto a neighbour's angle. Where the scan's
    frames are known (kind_rule counts) and the PandA's capture ended, its own count
    decides (:func:`~streamtomo.pipeline.formats.pcap_checks.pandas_count`): it
    used to be the direction of the streams' ends against the detector's losses or
    extras, and one lost detector frame "explained" a PandA two rows ahead (a double
    trigger beside a dropped detector message: 24 slots at their neighbours' angles,
    nothing counted). Otherwise the streams ending in different events
    (:class:`~streamtomo.pipeline.messages.StreamStep`) are judged against the
    detector's losses and extras. A count in step hides shifts that cancel (a double
    trigger and a lost row): with check_nominal_angles, projections it placed with
    another event's row show them. When the PandA is off, or says itself that it sent
    too many or too few, the scan counts ``angle_stream_out_of_step`` and its reason
    says so.
    """
    rejected = scan.admission.rejected
    pandas_signs = [reason for reason in PANDA_SIGNS if rejected.get(reason)]
    count = _panda_count(scan)
    found = scan.nominal_found
    if not scan.stream_steps and not pandas_signs and not found and (count is None or not count.surplus):
        return
    detail = "; ".join(f"event {step.event}: {step.detail}" for step in scan.stream_steps[:2])
    signs = ", ".join(pandas_signs) if pandas_signs else ("the PandA's count of rows" if count else "their ends")
    noticed = False
    if count is not None:
        if not count.surplus and not pandas_signs and not found:
            logger.info("the PandA sent one row per frame: the detector's own losses or extras explain %s", detail)
            return
        if count.fits_came and scan.config.nominal_angles_checked() and not found and not pandas_signs:
            # check_nominal_angles found every projection at its own row: both streams
            # stopped short, no row was lost.
            logger.info("both streams stopped %d frames short of the layout", count.frames - count.came)
            return
        if count.surplus:
            noticed = True
            scan.admission.notice(
                "angle_stream_out_of_step",
                f"the PandA's rows and the detector's frames may have gone out of step: {count.describe()}"
                + (f"; {detail}" if detail else ""),
            )
    elif rejected.get("frame_base_suspect") and not found and not pandas_signs:
        return  # the frames' positions are in doubt: their ends say nothing of the PandA
    else:
        more = any(step.pandas_more for step in scan.stream_steps)
        fewer = any(not step.pandas_more for step in scan.stream_steps)
        expected, seen = scan.config.expected_frames(), scan.admission.seen
        if expected:
            lost = sum(b - a + 1 for a, b in scan.admission.lost_ranges(expected))
        else:  # no layout (kind_rule header): the gaps in the frame numbers that came
            lost = max(seen) + 1 - len(seen) if seen else 0
        lost += 0 if scan.stream_ended else 1  # the detector's series_end is a message too
        lost += rejected.get("stins_header_missing", 0)  # and so is its header
        extras = sum(rejected.get(reason, 0) for reason in DETECTOR_EXTRAS)
        explained = not pandas_signs and ((more and not fewer and lost > 0) or (fewer and not more and extras > 0))
        if explained and not found:
            logger.info("the detector's own %s explain the streams' ends (%s)", "losses" if more else "extras", detail)
            return
        if scan.stream_steps and not explained:
            noticed = True
            scan.admission.notice(
                "angle_stream_out_of_step",
                f"the PandA's rows and the detector's frames went out of step ({detail}; {signs}); the detector's "
                f"{lost} lost frames and {extras} extra messages do not explain it",
            )
    if found and not noticed:
        signs = ", ".join([*pandas_signs, "check_nominal_angles"])
        scan.admission.notice(
            "angle_stream_out_of_step",
            f"check_nominal_angles found the PandA rows of {found} projections in other events than their own: "
            "the PandA's rows went out of step with the frames (shifts that cancel leave its count as it was)",
        )
    why = f"the PandA's rows and the detector's frames went out of step ({signs}): "
    if scan.config.nominal_angles_checked() and found:
        why += f"check_nominal_angles matched each projection to the row with its angle ({found} in other events)"
    elif scan.config.nominal_angles_checked():
        why += "check_nominal_angles found no projection's row in another event"
    elif scan.config.kind_rule == "counts":
        why += "projections after that point may sit at a neighbour's angle; check_nominal_angles=true repairs this"
    else:
        why += "projections after that point may sit at a neighbour's angle"
    scan.add_reason(why)


def _panda_count(scan: LiveScan) -> PandaCount | None:
    """The PandA's count against the scan's frames (kind_rule counts), or None where it
    cannot be told, or where the frames' positions are in doubt (frame_base_suspect:
    the count would blame the PandA for the detector's numbering)."""
    if scan.admission.rejected.get("frame_base_suspect"):
        return None
    rows = scan.angle_join.rows
    last_row_event = max(rows) + 1 if rows else None
    came = scan.admission.seen | scan.angle_join.waiting_positions()  # frames waiting for their row came too
    return pandas_count(scan.panda_ends, last_row_event, scan.config.expected_frames(), came)


def apply_angular_weights(scan: LiveScan) -> None:
    """Final weights by the angular interval each slot covers (gaps, irregular angles).

    Live slices weight every projection alike (pi / 2n), the usual choice while the
    coverage fills; at the end each slot gets its exact share instead.
    """
    if scan.sinogram is None or scan.ledger is None or scan.sinogram.n_filled < 2:
        return
    filled = scan.sinogram.filled_slots()
    weights = angular_weights(scan.sinogram.angles()[filled])
    ratio = np.ones(scan.sinogram.grid.n, dtype=np.float32)
    ratio[filled] = weights * (2.0 * len(filled) / math.pi)
    scan.ledger.slot_ratio = ratio
    scan.ledger.all_changed()


def interpolate_flats(scan: LiveScan, refs: ReferenceSet) -> None:
    """Re-correct the sinogram with the scan-end set: flats interpolated between before
    and after, and the darks after the projections where none came before."""
    assert scan.sinogram is not None and scan.geometry is not None and scan.ledger is not None
    try:
        before = scan.references.newest_before_scan_end()
    except ValueError:
        return  # no flats before the projections: the set after is all there is
    slot_frames: dict[int, list[FrameKey]] = {}
    for key, record in scan.ledger.records.items():
        if record.slot >= 0:
            slot_frames.setdefault(record.slot, []).append(key)

    def interpolated(keys: list[FrameKey]) -> Corrector:
        return Corrector(
            refs.dark,
            refs.flat_for(int(np.mean([index for index, _ in keys]))),
            refs.version,
            repair=scan.config.pixel_repair,
            saturation_level=scan.config.saturation_level,
        )

    scan.recorrect_slots(slot_frames, before, interpolated)
    if refs.flat_after is not refs.flat:
        scan.admission.counts["flats_interpolated"] = 1
        logger.info("flats after the scan: sinogram re-corrected with flats interpolated by frame number")
    if not np.array_equal(refs.dark, before.dark):
        scan.admission.counts["darks_after_used"] = 1
        logger.info("darks after the scan, none before: sinogram re-corrected with them")


def note_angular_coverage(scan: LiveScan) -> None:
    """Count a wedge of the half turn without projections as the notice
    ``limited_angle_coverage``: the scan's products have limited-angle streaks, which
    only a log line said (not /entry/status, the final file or the summary). Its text
    is then said for this scan: center 'auto' and the volume do not log it again.
    Projections all at one angle (a stage that never turned) are the narrowest wedge:
    they finished without a word."""
    if scan.sinogram is None or scan.sinogram.n_filled == 0:
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AngularCoverageWarning)
        warn_if_incomplete(scan.sinogram.angles()[scan.sinogram.filled_slots()])
    for item in caught:
        if issubclass(item.category, AngularCoverageWarning):
            text = str(item.message)
            scan.coverage_logged.add(text)
            scan.admission.notice("limited_angle_coverage", text)


def resolve_auto_center(scan: LiveScan) -> None:
    """center='auto': estimate the axis on the sweep's row, rebuild the slices with it."""
    if scan.sinogram is None or scan.geometry is None:
        return
    filled = scan.sinogram.filled_slots()
    if len(filled) < MIN_PROJECTIONS_FOR_AUTO_CENTER:
        logger.warning(
            "center 'auto': too few projections (%d) to estimate the axis; keeping the detector middle", len(filled)
        )
        return
    row = scan.sinogram.by_angle[filled, scan.geometry.sweep_position]
    try:
        with coverage_warnings_logged(logger, scan.coverage_logged):
            estimate = auto_center(row, scan.sinogram.angles()[filled])
    except ValueError as error:
        logger.warning("center 'auto' failed (%s): keeping the detector middle", error)
        return
    scan.auto_center = float(estimate)
    logger.info("center 'auto': rotation axis at column %.2f", estimate)
    config = scan.config
    scan.reconfigure(dataclasses.replace(config, center=f"{estimate:.3f}"))
    apply_angular_weights(scan)
    scan.reconcile(backfill=True)
    scan.config = config  # the published parameters keep saying 'auto'
