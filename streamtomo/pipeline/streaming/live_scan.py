"""The reducer's scan state, free of dranspose: sinograms, references, live slices.

Workers send sinogram rows for every projection and, every few projections, the
unweighted backprojection sum of the slice rows they corrected. Results arrive out
of order, a worker may lose its last partial sum (dranspose drops what ``finish``
returns, and ``dranspose replay`` delivers the last event to one worker only), may
have used stale references, or may be killed. So the reducer keeps, per frame, the
slice rows it *should* contribute (the target) and the rows whose backprojection
is already in the live sum (the contribution), and backprojects the difference
itself: on every publish for frames a partial sum covered, and at the end for all.
The final slices are therefore exactly the backprojection of the final sinogram,
whatever the number of workers and whatever they lost.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.correction.corrector import Corrector
from streamtomo.pipeline.correction.references import ReferenceSet, ReferenceTracker
from streamtomo.pipeline.messages import (
    DetectorInfo,
    PartialSum,
    ProjectionRows,
    ReferenceRows,
    Rejected,
    StreamEnded,
    WorkerResult,
)
from streamtomo.pipeline.reconstruction.cor import StreamingCorSweep, auto_center, cor_sweep
from streamtomo.pipeline.reconstruction.fbp import angular_weights, weight_partial_sum
from streamtomo.pipeline.reconstruction.live_views import SlidingWindowFBP
from streamtomo.pipeline.scan import ImageKey
from streamtomo.pipeline.streaming.frame_processor import LiveSliceGeometry, geometry_for
from streamtomo.pipeline.streaming.sinogram import AngleGrid, SinogramAssembler, UnknownAngleError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]


@dataclass
class _FrameRecord:
    slot: int
    angle_deg: float
    values: FloatArray  # corrected slice rows (K, cols) of this frame
    worker_rows: FloatArray | None  # what the worker backprojected, if it did
    contributed: FloatArray | None = None  # rows whose backprojection is in the sum


class LiveScan:
    """Assembles one scan; thread safety is the caller's (the reducer holds a lock)."""

    def __init__(
        self,
        config: PipelineConfig,
        on_references: Callable[[ReferenceSet], None] | None = None,
    ) -> None:
        self.config = config
        self.on_references = on_references
        # Versions unique across reducer instances: workers may still hold (and label
        # rows with) the references of an earlier scan.
        self.references = ReferenceTracker(first_version=secrets.randbits(40) << 8)
        self._versions: dict[int, ReferenceSet] = {}
        self._known_only: set[int] = set()  # earlier scans' references (re-correction only)
        self._kept: ReferenceSet | None = None  # an earlier scan's set, applied (keep_references)
        self._correctors: dict[int, Corrector] = {}
        self.reset()

    # -- lifecycle ------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the scan; keep references only if configured."""
        self.references.reset(self.config.keep_references)
        if not self.config.keep_references:
            self._versions.clear()
            self._correctors.clear()
            self._known_only.clear()
            self._kept = None
        self.detector: DetectorInfo | None = None
        self.geometry: LiveSliceGeometry | None = None
        self.sinogram: SinogramAssembler | None = None
        self.live_sum: FloatArray | None = None
        self._frames: dict[int, _FrameRecord] = {}
        self._early_partials: dict[int, int] = {}
        self._waiting_logged = False
        self._needs_fix: set[int] = set()
        self._slot_ratio: FloatArray | None = None  # final angular weights / uniform
        self.sweep: StreamingCorSweep | None = None  # live centre-of-rotation strip
        self.sweep_result: FloatArray | None = None  # its exact version, from the sinogram
        self.auto_center: float | None = None  # the estimate when center is 'auto'
        self.volume: FloatArray | None = None  # every sinogram row, at the end
        self.window: SlidingWindowFBP | None = None  # live_mode 'window'
        self._window_next = 0  # next frame index the window takes (acquisition order)
        self._window_rows: dict[int, tuple[FloatArray, float]] = {}
        self._waiting: list[ProjectionRows] = []  # projections whose references are not settled
        self._seen_frames: set[int] = set()  # frame indices that arrived (used or rejected)
        self._reference_frames: set[int] = set()
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self._logged_reasons: set[str] = set()
        self.state = "waiting"
        self.started = time.time()
        self.last_update = 0.0
        self.last_frame_time = 0.0
        self.stream_ended = False

    # -- incoming -------------------------------------------------------------------
    def add_result(self, result: WorkerResult) -> None:
        for item in result.items:
            if isinstance(item, ProjectionRows):
                self._add_projection(item)
            elif isinstance(item, PartialSum):
                self._add_partial(item)
            elif isinstance(item, ReferenceRows):
                self._add_reference(item)
            elif isinstance(item, Rejected):
                self.reject(item.reason, item.detail, item.frame_index)
                self._advance()
            elif isinstance(item, StreamEnded):
                self.stream_ended = True
        self.last_update = time.time()

    def reject(self, reason: str, detail: str, frame_index: int | None = None, *, counted: bool = False) -> None:
        """Count a rejected frame; log the first of each kind at WARNING.

        ``counted``: the frame was already counted as received (rejected later on).
        """
        self.rejected[reason] += 1
        if not counted:
            self.counts["rejected_arrivals"] += 1
        if frame_index is not None:
            self._seen_frames.add(frame_index)
        if reason not in self._logged_reasons:
            self._logged_reasons.add(reason)
            logger.warning("rejected (%s): %s; further ones are counted in /entry/status", reason, detail)
        else:
            logger.debug("rejected (%s): %s", reason, detail)

    def _ensure_detector(self, detector: DetectorInfo) -> bool:
        if self.detector is None:
            self.detector = detector
            self.geometry = geometry_for(self.config, detector)
            grid = AngleGrid(self.config.angle_start, self.config.angle_range, self.config.n_projections, self.config.angle_tolerance)
            self.sinogram = SinogramAssembler(len(self.geometry.sinogram_rows), grid, detector.cols)
            self.live_sum = self.geometry.new_stack()
            self.sweep = self._new_sweep()
            self.window = self._new_window()
            self.state = "running"
            logger.info(
                "scan started: detector %dx%d %s, %d sinogram rows, live slices at rows %s",
                detector.rows, detector.cols, detector.dtype, len(self.geometry.sinogram_rows),
                list(self.geometry.slice_rows),
            )
            return True
        if (detector.rows, detector.cols) != (self.detector.rows, self.detector.cols):
            self.reject("wrong_shape", f"detector {detector.rows}x{detector.cols} != {self.detector.rows}x{self.detector.cols}")
            return False
        return True

    def _first_time(self, frame_index: int) -> bool:
        if frame_index in self._seen_frames:
            self.reject("duplicate_frame", f"frame {frame_index} arrived twice; the first is kept", frame_index)
            return False
        self._seen_frames.add(frame_index)
        return True

    def _add_reference(self, ref: ReferenceRows) -> None:
        if ref.frame_index in self._reference_frames:
            # Distributed mode broadcasts darks and flats: every worker sends them.
            self.counts["reference_copies"] += 1
            return
        if not self._ensure_detector(ref.detector) or not self._first_time(ref.frame_index):
            return
        self._reference_frames.add(ref.frame_index)
        self.counts["darks" if ref.key == ImageKey.DARK else "flats"] += 1
        self.counts["frames"] += 1
        self.references.add(ref.key, ref.frame_index, ref.rows)
        self._advance()

    def _close_reference_batch(self, scan_ended: bool = False) -> None:
        if not self.references.batch_open:
            return
        refs = self.references.close_batch(scan_ended=scan_ended)
        if refs is None:
            return
        self._versions[refs.version] = refs
        logger.info("references version %d ready (flats after: %s)", refs.version, refs.flat_after is not None)
        if refs.flat_after is None and self.on_references is not None:
            self.on_references(refs)

    def _batch_complete(self) -> bool:
        """The open batch is complete when a projection follows it and every frame
        between the batch's first frame and that projection has arrived.

        Results arrive out of order, so a projection alone does not prove that the
        darks and flats before it are all here. A lost frame would block forever:
        past a bound of waiting projections the batch closes anyway, with a warning.
        """
        first = self.references.open_first_index
        if first is None:
            return False
        after = [m.frame_index for m in self._waiting if m.frame_index > first]
        if not after:
            return False
        if all(i in self._seen_frames for i in range(first, min(after))):
            return True
        if len(after) > max(4 * self.config.flush_every, 32):
            self.counts["references_closed_incomplete"] += 1
            logger.warning("reference batch from frame %d closed with frames missing", first)
            return True
        return False

    def _advance(self) -> None:
        """Close the reference batch when complete; place projections that can be."""
        if self._batch_complete():
            self._close_reference_batch()
        first = self.references.open_first_index
        still: list[ProjectionRows] = []
        for msg in self._waiting:
            refs = self._applicable(msg.frame_index)
            if refs is None or (first is not None and msg.frame_index > first):
                still.append(msg)
            else:
                self._place(msg, refs)
        if still and not self._waiting_logged:
            self._waiting_logged = True
            logger.info("projections wait for their darks and flats (%d so far)", len(still))
        self._waiting = still

    def remember_references(self, refs: ReferenceSet, applicable: bool) -> None:
        """References from an earlier scan: used for this one only if ``applicable``
        (``keep_references``); otherwise only to re-correct rows workers labelled with them."""
        # Versions order references within a scan only, and frame indices belong to
        # the scan that took them: an earlier scan's set is never compared with ours.
        self._versions[refs.version] = refs
        self._known_only.add(refs.version)
        if applicable:
            self._kept = refs

    def _applicable(self, frame_index: int) -> ReferenceSet | None:
        """The newest reference set of this scan taken before ``frame_index``; else the
        kept set of an earlier scan; else this scan's references taken after the projections."""
        ours = [r for r in self._versions.values() if r.version not in self._known_only and r.flat_after is None]
        before = [r for r in ours if r.before_index < frame_index]
        if before:
            return max(before, key=lambda r: r.version)
        if self._kept is not None:
            return self._kept
        return max(ours, key=lambda r: r.version) if ours else None

    def _corrector(self, version: int) -> Corrector:
        if version not in self._correctors:
            refs = self._versions[version]
            self._correctors[version] = Corrector(refs.dark, refs.flat, version)
        return self._correctors[version]

    def _add_projection(self, msg: ProjectionRows) -> None:
        if not self._ensure_detector(msg.detector) or not self._first_time(msg.frame_index):
            return
        self.counts["frames"] += 1
        self.last_frame_time = time.time()
        self.references.note_projection(msg.frame_index)
        if not msg.angle_measured:
            self.counts["nominal_angles"] += 1
        if msg.reference_version and msg.reference_version not in self._versions:
            self.reject("unknown_references", f"frame {msg.frame_index} used reference version {msg.reference_version}", counted=True)
            return
        self._waiting.append(msg)
        self._advance()

    def _place(self, msg: ProjectionRows, refs: ReferenceSet) -> None:
        assert self.sinogram is not None and self.geometry is not None
        try:
            slot = self.sinogram.grid.slot(msg.angle_deg)
        except UnknownAngleError as error:
            self.reject("unknown_angle", f"frame {msg.frame_index}: {error}", msg.frame_index, counted=True)
            return
        rows = np.asarray(msg.rows)
        worker_rows = None
        if msg.reference_version == 0:
            self.counts["corrected_by_reducer"] += 1
            values = self._corrector(refs.version).correct_fast(rows)
        elif msg.reference_version != refs.version:
            if msg.reference_version not in self._versions:
                self.reject("unknown_references", f"frame {msg.frame_index} used reference version {msg.reference_version}", counted=True)
                return
            self.counts["recorrected_stale"] += 1
            raw = self._corrector(msg.reference_version).uncorrect(rows.astype(np.float32))
            values = self._corrector(refs.version).correct(raw)
            if msg.recon_id:
                worker_rows = rows[self.geometry.slice_positions].astype(np.float32)
        else:
            values = rows.astype(np.float32, copy=False)
            if msg.recon_id:
                worker_rows = values[self.geometry.slice_positions]
        if not np.isfinite(values).all():
            self.counts["frames_nonfinite_repaired"] += 1
            values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        self.sinogram.place(slot, msg.angle_deg, values)
        self.counts["projections"] += 1
        if self.sweep is not None:
            self.sweep.add(values[self._sweep_position()], msg.angle_deg)
        if self.window is not None:
            self._window_rows[msg.frame_index] = (values[self.geometry.slice_positions], msg.angle_deg)
            self._advance_window()
        record = _FrameRecord(slot, msg.angle_deg, values[self.geometry.slice_positions].copy(), worker_rows)
        if worker_rows is not None and msg.recon_id != self.geometry.recon_id:
            record.worker_rows = None  # made with other settings: its partial is discarded
        self._frames[msg.frame_index] = record
        early = self._early_partials.pop(msg.frame_index, 0)
        if early and record.worker_rows is not None:
            record.contributed = record.worker_rows * early
            self._needs_fix.add(msg.frame_index)
        # A repeated angle changes the target of every frame in the slot.
        if self.sinogram.counts[slot] > 1:
            self._needs_fix.update(i for i, r in self._frames.items() if r.slot == slot and r.contributed is not None)

    def _add_partial(self, partial: PartialSum) -> None:
        if self.geometry is None or self.live_sum is None or partial.recon_id != self.geometry.recon_id:
            self.counts["partials_discarded"] += 1
            return
        if partial.slices.shape != self.live_sum.shape:
            self.reject("wrong_shape", f"partial sum shape {partial.slices.shape} != {self.live_sum.shape}")
            return
        self.live_sum += partial.slices
        self.counts["partials"] += 1
        for index in partial.frame_indices:
            record = self._frames.get(index)
            if record is None or record.worker_rows is None:
                # Rows not here yet (results arrive out of order), or raw rows that the
                # reducer corrected: reconcile once they are.
                if record is None:
                    self._early_partials[index] = self._early_partials.get(index, 0) + 1
                else:
                    self.reject("unexpected_partial", f"frame {index} is in a partial sum but was sent raw", counted=True)
                continue
            record.contributed = record.worker_rows if record.contributed is None else record.contributed + record.worker_rows
            self._needs_fix.add(index)

    # -- reconciliation -------------------------------------------------------------
    def _target(self, record: _FrameRecord) -> FloatArray:
        assert self.sinogram is not None
        scale = np.float32(1.0 / self.sinogram.counts[record.slot])
        if self._slot_ratio is not None:
            scale *= self._slot_ratio[record.slot]
        return record.values * scale

    def _backproject(self, rows: FloatArray, angle_deg: float) -> None:
        assert self.geometry is not None and self.live_sum is not None
        self.geometry.add(self.live_sum, rows, angle_deg)

    def reconcile(self, backfill: bool = False) -> int:
        """Make the live sum match the targets; returns backprojections done.

        Without ``backfill`` only frames some partial sum covered are fixed; frames
        whose partial sum has not come yet are left to their worker.
        """
        if self.geometry is None:
            return 0
        indices = list(self._frames) if backfill else sorted(self._needs_fix)
        done = 0
        for index in indices:
            record = self._frames[index]
            if record.contributed is None and not backfill:
                continue
            target = self._target(record)
            delta = target if record.contributed is None else target - record.contributed
            if np.any(delta):
                self._backproject(delta, record.angle_deg)
                done += 1
            record.contributed = target
        self._needs_fix.clear()
        if backfill:
            self.counts["backfilled"] += done
        return done

    # -- settings changes -----------------------------------------------------------
    def reconfigure(self, config: PipelineConfig) -> None:
        """New live settings (centre, filter, ...): rebuild slices from the sinogram."""
        if self.detector is not None:
            for name in ("rows", "n_projections", "angle_start", "angle_range"):
                if getattr(config, name) != getattr(self.config, name):
                    raise ValueError(f"{name} cannot change during a scan (now {getattr(self.config, name)!r})")
            geometry = LiveSliceGeometry(config, self.detector)  # validates before applying
        self.config = config
        if self.detector is None:
            return
        self.geometry = geometry
        self.live_sum = geometry.new_stack()
        next_frame = self._window_next
        self.window = self._new_window()
        if self.window is not None:  # the projections already in it, in acquisition order
            for index in sorted(i for i in self._frames if i < next_frame):
                self.window.add(self._frames[index].values, self._frames[index].angle_deg)
            self._window_next = next_frame
        self.sweep = self._new_sweep()
        self.sweep_result = None
        if self.sweep is not None and self.state == "finished":
            self._finish_sweep()  # a change after the scan: the exact sweep at once
        elif self.sweep is not None:  # seed it with the projections so far
            for slot in self.sinogram.filled_slots() if self.sinogram is not None else []:
                self.sweep.add(self.sinogram.data[self._sweep_position(), slot], float(self.sinogram.angles()[slot]))  # type: ignore[union-attr]
        assert self.sinogram is not None
        for record in self._frames.values():
            # Each frame of a slot contributes slot mean / count, so the slot mean
            # stands in for every frame's own rows (the slice rows may have changed).
            record.values = self.sinogram.data[geometry.slice_positions, record.slot, :].copy()
            record.worker_rows = None
            record.contributed = None
        done = self.reconcile(backfill=True)
        logger.info("live settings changed (%s): rebuilt %d projections", geometry.recon_id, done)

    # -- end of scan ----------------------------------------------------------------
    def finish(self) -> None:
        """Everything arrived: apply late references, backfill, mark finished."""
        # Whatever is still open is complete now; flats after the last projection
        # are interpolated with those before.
        if any(m.frame_index > (self.references.open_first_index or 0) for m in self._waiting):
            self._close_reference_batch()
        self._close_reference_batch(scan_ended=True)
        waiting, self._waiting = self._waiting, []
        for msg in waiting:
            refs = self._applicable(msg.frame_index)
            if refs is None:
                self.reject("no_references", f"projection {msg.frame_index}: the scan had no flats", counted=True)
            else:
                self._place(msg, refs)
        current = self.references.current
        if current is not None and current.flat_after is not None:
            self._interpolate_flats(current)
        for index in list(self._early_partials):
            self.reject("orphan_partial", f"frame {index} is in a partial sum but its rows never came", counted=True)
        self._early_partials.clear()
        self._apply_angular_weights()
        self.reconcile(backfill=True)
        if self.config.center.strip() == "auto":
            self._resolve_auto_center()
        if self.sweep is not None:
            self._finish_sweep()
        self.state = "finished"

    # -- sliding window (live_mode 'window') ----------------------------------------
    def _new_window(self) -> SlidingWindowFBP | None:
        if self.config.live_mode != "window" or self.geometry is None or self.detector is None:
            return None
        self._window_next = 0
        return SlidingWindowFBP(self.detector.cols, self.geometry.center, self.geometry.size, self.config.filter, len(self.geometry.slice_rows))

    def _advance_window(self) -> None:
        """Feed the window in acquisition (frame) order; frames that arrived as
        references or were rejected are skipped, a frame still missing waits."""
        assert self.window is not None
        while self._window_next in self._seen_frames:
            placed = self._window_rows.pop(self._window_next, None)
            if placed is not None:
                self.window.add(placed[0], placed[1])
            self._window_next += 1

    # -- centre of rotation ---------------------------------------------------------
    def _sweep_position(self) -> int:
        """The sinogram-row position of the middle live slice: the sweep's row."""
        assert self.geometry is not None
        return int(self.geometry.slice_positions[len(self.geometry.slice_positions) // 2])

    def sweep_centers(self) -> npt.NDArray[np.float64]:
        assert self.geometry is not None and self.detector is not None
        steps = self.config.cor_sweep_steps
        centers = self.geometry.center + self.config.cor_sweep_step * (np.arange(steps) - (steps - 1) / 2.0)
        return np.clip(centers, 0.0, self.detector.cols - 1.0)

    def _new_sweep(self) -> StreamingCorSweep | None:
        if self.config.cor_sweep_steps == 0 or self.geometry is None or self.detector is None:
            return None
        return StreamingCorSweep(self.detector.cols, self.sweep_centers(), self.geometry.size, self.config.filter)

    def _finish_sweep(self) -> None:
        """Exact sweep from the sinogram (order, repeats and weights accounted for)."""
        assert self.sinogram is not None and self.sweep is not None and self.geometry is not None
        filled = self.sinogram.filled_slots()
        if len(filled) < 2:
            return
        row = self.sinogram.data[self._sweep_position()][filled]
        self.sweep_result = cor_sweep(row, self.sinogram.angles()[filled], self.sweep.centers, self.config.filter, self.geometry.size, backend="direct")

    def sweep_slices(self) -> FloatArray | None:
        if self.sweep is None:
            return None
        return self.sweep_result if self.sweep_result is not None else self.sweep.result()

    def _resolve_auto_center(self) -> None:
        """center='auto': estimate the axis on the sweep's row, rebuild the slices with it."""
        assert self.sinogram is not None and self.detector is not None
        filled = self.sinogram.filled_slots()
        if len(filled) < 8:
            logger.warning("center 'auto': too few projections (%d) to estimate the axis", len(filled))
            return
        row = self.sinogram.data[self._sweep_position()][filled]
        try:
            estimate = auto_center(row, self.sinogram.angles()[filled])
        except ValueError as error:
            logger.warning("center 'auto' failed (%s): keeping the detector middle", error)
            return
        self.auto_center = float(estimate)
        logger.info("center 'auto': rotation axis at column %.2f", estimate)
        config = self.config
        self.reconfigure(dataclasses.replace(config, center=f"{estimate:.3f}"))
        self._apply_angular_weights()
        self.reconcile(backfill=True)
        self.config = config  # the published parameters keep saying 'auto'


    def _apply_angular_weights(self) -> None:
        """Final weights by the angular interval each slot covers (gaps, irregular angles).

        Live slices weight every projection alike (pi / 2n), the usual choice while
        the coverage fills; at the end each slot gets its exact share instead.
        """
        if self.sinogram is None or self.sinogram.n_filled < 2:
            return
        filled = self.sinogram.filled_slots()
        weights = angular_weights(self.sinogram.angles()[filled])
        ratio = np.ones(self.sinogram.grid.n, dtype=np.float32)
        ratio[filled] = weights * (2.0 * len(filled) / math.pi)
        self._slot_ratio = ratio
        self._needs_fix.update(i for i, r in self._frames.items() if r.contributed is not None)

    def _interpolate_flats(self, refs: ReferenceSet) -> None:
        """Re-correct the sinogram with flats interpolated between before and after."""
        assert self.sinogram is not None and self.geometry is not None
        before = self._corrector(max(v for v, r in self._versions.items() if r.flat_after is None and v not in self._known_only))
        slot_frames: dict[int, list[int]] = {}
        for index, record in self._frames.items():
            slot_frames.setdefault(record.slot, []).append(index)
        for slot, indices in slot_frames.items():
            raw = before.uncorrect(self.sinogram.data[:, slot, :])
            corrector = Corrector(refs.dark, refs.flat_for(int(np.mean(indices))), refs.version)
            self.sinogram.data[:, slot, :] = corrector.correct(raw)
            self.sinogram.dirty_slots.add(slot)
            for index in indices:
                # Slot mean stands in for the frame's rows (see reconfigure).
                self._frames[index].values = self.sinogram.data[self.geometry.slice_positions, slot, :].copy()
                self._needs_fix.add(index)
        self.counts["flats_interpolated"] = 1
        logger.info("flats after the scan: sinogram re-corrected with interpolated flats")

    # -- outputs --------------------------------------------------------------------
    @property
    def n_projections(self) -> int:
        return 0 if self.sinogram is None else self.sinogram.n_filled

    def slices(self) -> FloatArray | None:
        """Weighted live slices: the last half turn in 'window' mode while the scan
        runs, otherwise (and at the end) every projection."""
        if self.live_sum is None:
            return None
        if self.window is not None and self.state != "finished" and self.window.n_projections:
            return self.window.result()
        # pi / 2n for n projections, whatever the range (a 360-degree scan's n is twice).
        return weight_partial_sum(self.live_sum, self.n_projections)

    def expected_frames(self) -> int | None:
        """Frames the scan should have, when the layout is known (counts rule)."""
        c = self.config
        if c.kind_rule != "counts":
            return None
        return c.n_darks_before + c.n_flats_before + c.n_projections + c.n_flats_after + c.n_darks_after

    def lost_frames(self) -> list[tuple[int, int]]:
        """Frame index ranges (inclusive) that never arrived; known at the end of a scan."""
        expected = self.expected_frames()
        if expected is None or self.state != "finished":
            return []
        ranges: list[tuple[int, int]] = []
        for index in range(expected):
            if index not in self._seen_frames:
                if ranges and ranges[-1][1] == index - 1:
                    ranges[-1] = (ranges[-1][0], index)
                else:
                    ranges.append((index, index))
        return ranges

    def status(self) -> dict[str, int | float | str]:
        missing = 0 if self.sinogram is None else len(self.sinogram.missing_slots())
        lost = sum(b - a + 1 for a, b in self.lost_frames())
        return {
            "state": self.state,
            "frames_received": self.counts["frames"] + self.counts["rejected_arrivals"],
            "frames_rejected": sum(self.rejected.values()),
            "darks": self.counts["darks"],
            "flats": self.counts["flats"],
            "projections": self.counts["projections"],
            "missing_angles": missing,
            "pending_projections": len(self._waiting),
            "frames_lost": lost,
        }
