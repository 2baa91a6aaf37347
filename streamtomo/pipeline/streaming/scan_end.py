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
from typing import TYPE_CHECKING

import numpy as np

from streamtomo.pipeline.correction.corrector import Corrector
from streamtomo.pipeline.correction.references import ReferenceSet
from streamtomo.pipeline.reconstruction.backends.common import coverage_warnings_logged
from streamtomo.pipeline.reconstruction.cor import auto_center
from streamtomo.pipeline.reconstruction.fbp import angular_weights
from streamtomo.pipeline.streaming.contributions import FrameKey

if TYPE_CHECKING:
    from streamtomo.pipeline.streaming.live_scan import LiveScan

logger = logging.getLogger(__name__)
MIN_PROJECTIONS_FOR_AUTO_CENTER = 8


def finish(scan: LiveScan, volume_follows: bool) -> None:
    """Everything arrived: apply late references, backfill, then say what is final."""
    scan.release_held()  # a scan too short for two frames to agree on the shape
    warn_if_base_looks_off(scan)
    for msg in scan.angle_join.take_unjoined():
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
    for msg in waiting:
        applicable = refs.applicable(msg.frame_index)
        if applicable is None:
            scan.reject(
                "no_references", f"projection {msg.frame_index}: the scan had no flats", msg.frame_index, counted=True
            )
        elif msg.reference_version and not refs.knows(msg.reference_version):
            scan.reject(
                "unknown_references",
                f"frame {msg.frame_index} was corrected with darks and flats this reducer never made",
                msg.frame_index,
                counted=True,
            )
        else:
            scan.place(msg, applicable)
    scan.resolve_nominal(finishing=True)
    current = refs.current
    if current is not None and current.flat_after is not None and scan.ledger is not None:
        interpolate_flats(scan, current)
    if scan.ledger is not None:
        for index, _event in scan.ledger.take_orphan_partials():
            scan.reject(
                "orphan_partial",
                f"frame {index} is in a partial sum but its rows never came",
                index,
                counted=index in scan.admission.seen,
            )
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
        rejected = ", ".join(f"{n} {reason}" for reason, n in sorted(scan.admission.rejected.items())) or "none"
        scan.state = "failed"
        scan.reason = f"no projection was reduced: {received} frames received, rejected: {rejected}"
        logger.warning("scan failed: %s", scan.reason)
        return
    if scan.config.center.strip() == "auto":
        resolve_auto_center(scan)
    scan.state = "reconstructing" if volume_follows else "finished"


def warn_if_base_looks_off(scan: LiveScan) -> None:
    """frame_base 'auto' trusts the earliest image; a malformed or lost first image can
    shift it by one. The sign at the end: position 0 never came and the position one
    past the layout did. Say so, with the fix, instead of leaving a scan quietly off."""
    expected = scan.config.expected_frames()
    seen = scan.admission.seen
    if scan.config.fixed_frame_base() is not None or not expected or 0 in seen or expected not in seen:
        return
    scan.admission.counts["frame_base_suspect"] = 1
    logger.warning(
        "frame position 0 never came but position %d (one past the %d frames of the layout) did: the first "
        "image was probably lost or malformed and frame_base 'auto' took the next one's number as the start; "
        "every frame may be one position off. Set frame_base (1 for the Orca at DanMAX) and replay the scan",
        expected,
        expected,
    )


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
    """Re-correct the sinogram with flats interpolated between before and after."""
    assert scan.sinogram is not None and scan.geometry is not None and scan.ledger is not None
    try:
        before = scan.references.newest_before_scan_end()
    except ValueError:
        return  # no flats before the projections: the set after is all there is
    slot_frames: dict[int, list[FrameKey]] = {}
    for key, record in scan.ledger.records.items():
        if record.slot >= 0:
            slot_frames.setdefault(record.slot, []).append(key)
    for slot, keys in slot_frames.items():
        stored = scan.sinogram.by_angle[slot]
        raw = before.uncorrect(stored)
        corrector = Corrector(
            refs.dark,
            refs.flat_for(int(np.mean([index for index, _ in keys]))),
            refs.version,
            repair=scan.config.pixel_repair,
            saturation_level=scan.config.saturation_level,
        )
        stored[...] = corrector.correct(raw)
        scan.sinogram.dirty_slots.add(slot)
        for key in keys:
            # Slot mean stands in for the frame's rows (see LiveScan.reconfigure).
            scan.ledger.records[key].values = np.ascontiguousarray(stored[scan.geometry.slice_positions])
        scan.ledger.slot_changed(slot)
    scan.admission.counts["flats_interpolated"] = 1
    logger.info("flats after the scan: sinogram re-corrected with flats interpolated by frame number")


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
