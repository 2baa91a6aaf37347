"""The reducer's scan state, free of dranspose: it admits frames and adds what workers did.

Per projection the reducer does two things, both at memory speed: it copies the
projection's corrected rows into the angle-major sinogram (one contiguous block)
and it adds worker partial sums into the live products. Everything else per
projection (correction, filtering, backprojection into the live slices, the
centre-of-rotation sweep and the window blocks) runs in the workers. The pieces:

* :class:`~.admission.FrameAdmission`: counters, duplicates, reasons for rejects;
* :class:`~.reference_book.ReferenceBook`: darks and flats, versions, re-correction;
* :class:`~.sinogram.SinogramAssembler`: angle slots and the sinogram stack;
* :class:`~.contributions.ContributionLedger`: the live sums and the ledger that
  keeps them exactly the backprojection of the final sinogram, whatever the order
  of results, lost partial sums, stale references or settings changes;
* :mod:`.scan_end`: what happens once everything arrived.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.config import ConfigError, PipelineConfig
from streamtomo.pipeline.correction.corrector import Corrector, unusable_projection
from streamtomo.pipeline.correction.references import ReferenceSet
from streamtomo.pipeline.formats.kinds import FrameKindRule
from streamtomo.pipeline.messages import (
    NOMINAL_ROW,
    AngleRow,
    DetectorInfo,
    PandaEnded,
    PartialSum,
    ProjectionRows,
    ReferenceCopy,
    ReferenceRows,
    Rejected,
    StreamEnded,
    StreamStep,
    WorkerResult,
    with_own_rows,
)
from streamtomo.pipeline.reconstruction.fbp import pi_over_2n
from streamtomo.pipeline.scan import ImageKey
from streamtomo.pipeline.streaming import scan_end
from streamtomo.pipeline.streaming.admission import FrameAdmission, index_ranges, ranges_text
from streamtomo.pipeline.streaming.angle_join import AngleJoin
from streamtomo.pipeline.streaming.broadcast_references import takes_both_kinds_first
from streamtomo.pipeline.streaming.contributions import REJECTED_SLOT, ContributionLedger, FrameKey
from streamtomo.pipeline.streaming.late_references import REFERENCE_KINDS, LateReferences
from streamtomo.pipeline.streaming.live_geometry import LiveSliceGeometry, fit_to_detector
from streamtomo.pipeline.streaming.memory_budget import MemoryBudgetError, check_memory_budget
from streamtomo.pipeline.streaming.nominal_angles import NominalAngleCheck, another_projections_row
from streamtomo.pipeline.streaming.prefault import ArrayPool
from streamtomo.pipeline.streaming.reference_book import ReferenceBook
from streamtomo.pipeline.streaming.sinogram import AngleGrid, SinogramAssembler, UnknownAngleError
from streamtomo.pipeline.streaming.snapshot import ProductWrite, ScanSnapshot, take_snapshot

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
# The reducer takes a shape (with its pixel type) as the detector's once SHAPE_AGREEMENT distinct frames have
# it and it leads every other shape by SHAPE_LEAD frames (results from all workers come
# here: a clean stream settles on its first two frames). Agreement alone let two bad
# copies that decode to one shape, early, decide it: every good frame after them was
# refused as wrong_shape and the scan failed (benchmarks/fuzz_streams.py --seed 777,
# round 353: 84 of 100 good frames lost). Three, not two: two frames of another shape
# that came before any good one had their two votes and their lead of two, and a
# review's scan lost all 68 good frames. A clean stream settles on its third frame.
SHAPE_AGREEMENT = 3
SHAPE_LEAD = 3
# Frames held while no shape leads, at most (each holds its rows: 16 MB at 2048^2);
# then the shape most of them have settles it (the earliest on a tie).
SHAPE_HOLD_FRAMES = 8
# Frames of one slot measured this many steps apart or more are two angles averaged as
# one (angles_share_slot): jitter of one angle stays well below.
ANGLES_APART_STEPS = 0.25
# Settings that fix the arrays' shapes: they cannot change while a scan runs.
FIXED_DURING_SCAN = ("rows", "n_projections", "angle_start", "angle_range", "angle_step", "bin")


# Angles a step is fitted to before it is advised over the grid's start.
MIN_ANGLES_FOR_STEP = 8


def _off_integer(positions: npt.NDArray[np.float64]) -> float:
    """RMS distance of ``positions`` from the nearest whole number."""
    return float(np.sqrt(np.mean((positions - np.round(positions)) ** 2)))


def median_spacing(distinct: npt.NDArray[np.float64], floor: float) -> float | None:
    """The median spacing of sorted distinct angles, spacings of ``floor`` or less left
    out (one angle measured twice); None where none is left."""
    spacing = np.diff(distinct)
    spacing = spacing[spacing > floor]
    return float(np.median(spacing)) if spacing.size else None


def fitted_step(angles: npt.NDArray[np.float64], start: float, step: float, offset: float, slots: int) -> float | None:
    """The measured ``angles``' own step, where it fits them clearly better than the
    grid's (``start`` + i ``step``, moved by ``offset`` steps) and differs from it by a
    quarter step or more over the ``slots``; else None. The step is the median spacing of
    the sorted distinct angles; it must put them on whole multiples (RMS under a tenth
    of a step, and under half the grid's), and span at most a turn over the slots.
    Estimated as their span over their count, three in-order angles half a step off
    gave a step advice that left frames refused, and golden-angle orders one more than
    a turn."""
    distinct = np.unique(angles)
    if distinct.size < MIN_ANGLES_FOR_STEP:
        return None
    own = median_spacing(distinct, 1e-9 * max(step, 1e-12))
    if own is None:
        return None
    if abs(own / step - 1.0) * slots < ANGLES_APART_STEPS or own * (slots - 1) > 360.0 + 1e-9:
        return None
    own_fit = _off_integer((distinct - distinct[0]) / own)
    grid_fit = _off_integer((distinct - start) / step - offset)
    return own if own_fit < 0.1 and own_fit < 0.5 * grid_fit else None


class LiveScan:
    """Assembles one scan; thread safety is the caller's (the reducer holds a lock)."""

    def __init__(
        self,
        config: PipelineConfig,
        on_references: Callable[[ReferenceSet], None] | None = None,
        pool: ArrayPool | None = None,
        on_references_lacking: Callable[[ReferenceSet], None] | None = None,
    ) -> None:
        self.config = config
        self.pool = pool  # large arrays kept across scans (the reducer's)
        self.references = ReferenceBook(config.keep_references, on_references, on_references_lacking)
        self.reset()

    # -- lifecycle ------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the scan; keep references only if configured."""
        self.references.reset(self.config.keep_references)
        self.admission = FrameAdmission()
        self.detector: DetectorInfo | None = None
        self.geometry: LiveSliceGeometry | None = None
        self.sinogram: SinogramAssembler | None = None
        self.ledger: ContributionLedger | None = None
        self._waiting: list[ProjectionRows] = []  # projections whose references are not settled
        self._held: list[ReferenceRows | ProjectionRows] = []  # waiting for the detector shape
        self.angle_join = AngleJoin()
        self.nominal = NominalAngleCheck()
        self._shape_votes: Counter[DetectorInfo] = Counter()  # by shape and pixel type
        self._shape_voters: set[tuple[int, int]] = set()  # (frame, event) copies that voted
        self._notices: set[tuple[str, int]] = set()  # (reason, event) of notices counted
        # Copies withdrawn from the live products (ContributionLedger.withdraw), kept
        # here too: a ledger made later (detector settled, settings changed) needs them.
        self._withdrawn: set[FrameKey] = set()
        # Darks and flats projections waited for in vain (_give_up_awaited_references).
        self._references_given_up: set[int] = set()
        # The reference batch closed without some of its frames (_batch_ready): one that
        # comes late makes its set again (_complete_late). Until then, for a bound, rows
        # corrected with a set this reducer does not know wait: workers that saw every
        # broadcast dark and flat built the whole set.
        self.late = LateReferences()
        # Events whose message was refused with no frame position (before the frame base,
        # corrupt): a broadcast dark or flat reaches every worker and each refuses it, so
        # it was counted once per worker (60 rejected of 40 frames with 2 workers).
        self._refused_events: set[int] = set()
        self.stream_steps: list[StreamStep] = []  # events that showed the PandA and detector out of step
        self.panda_ends: list[int] = []  # events of the PandA's capture ENDs
        # Projections check_nominal_angles placed with a row of another event: the
        # PandA's rows sat beside other frames there, whatever its count says.
        self.nominal_found = 0
        self._reference_frames: set[int] = set()
        # (kind, frame index, mean level) of each dark and flat used: a dark as bright as
        # the flats says the frames' kinds, so their positions, are off (scan_end).
        self.reference_levels: list[tuple[ImageKey, int, float]] = []
        self.published: dict[str, ProductWrite] = {}  # what the last snapshot carried (snapshot.py)
        self._waiting_logged = False
        self.auto_center: float | None = None  # the estimate when center is 'auto'
        self.coverage_logged: set[str] = set()  # angular-coverage warnings said for this scan
        self.volume: FloatArray | None = None  # every sinogram row, filled at the end
        self.volume_done = 0  # volume slices done so far
        self.state = "waiting"
        self.reason = ""  # why the scan failed, for people
        self.started = time.time()
        self.last_update = 0.0
        self.last_frame_time = 0.0
        self.stream_ended = False
        # No frame comes any more (finish ran, or the reducer closed mid-scan): a frame
        # not seen by now is lost, whatever the state says of the products.
        self.ended = False

    @property
    def counts(self) -> dict[str, int]:
        counts = dict(self.admission.counts)
        if self.ledger is not None:
            counts.update(self.ledger.counts)
        if self.angle_join.joined:
            counts["angles_joined"] = self.angle_join.joined
        return counts

    @property
    def rejected(self) -> dict[str, int]:
        """Counts by reason: frames refused, and notices of the streams (:attr:`notices`)."""
        return dict(self.admission.rejected)

    @property
    def notices(self) -> dict[str, int]:
        """The counts of :attr:`rejected` that are no frame's: what the streams showed."""
        return self.admission.notices

    @property
    def live_sum(self) -> FloatArray | None:
        return None if self.ledger is None else self.ledger.live_sum

    def remember_references(self, refs: ReferenceSet, applicable: bool) -> None:
        self.references.remember(refs, applicable)

    # -- incoming -------------------------------------------------------------------
    def add_result(self, result: WorkerResult) -> None:
        for item in result.items:
            if isinstance(item, ProjectionRows):
                self._add_projection(item)
            elif isinstance(item, PartialSum):
                if self.ledger is None or not self.ledger.add_partial(item):
                    logger.debug(
                        "partial sum of %d frames from %s dropped (other settings)",
                        len(item.frame_indices),
                        item.worker,
                    )
            elif isinstance(item, ReferenceRows):
                self._add_reference(item)
            elif isinstance(item, ReferenceCopy):
                # Another worker of the broadcast sends the rows (tomo_worker, broadcast_senders).
                self.admission.counts["reference_copies"] += 1
            elif isinstance(item, Rejected):
                if not item.frame:
                    # A notice, not a frame (a PandA header mid-capture, streams out of
                    # step): no arrival to count, and once per event, though the headers'
                    # and ends' events reach every worker and each one says it (event -1:
                    # once per scan).
                    if (item.reason, item.event) not in self._notices:
                        self._notices.add((item.reason, item.event))
                        self.admission.notice(item.reason, item.detail)
                    continue
                if item.frame_index is None and item.event >= 0:
                    if item.event in self._refused_events:
                        continue
                    self._refused_events.add(item.event)
                self.reject(item.reason, item.detail, item.frame_index)
                if item.frame_index is not None:
                    self.late.frame_refused(item.frame_index)
                if item.frame_index is not None and item.event >= 0:
                    # Rejected after its worker may have summed it (its rows could not
                    # be read here): no sum holding it may stay in the live products.
                    self._withdraw((item.frame_index, item.event))
                self._advance()
            elif isinstance(item, StreamEnded):
                self.stream_ended = True
            elif isinstance(item, StreamStep):
                self.stream_steps.append(item)  # judged at the scan's end (scan_end.judge_stream_steps)
            elif isinstance(item, PandaEnded):
                self.panda_ends.append(item.event)  # judged with the steps
            elif isinstance(item, AngleRow):
                for waiting, row in self.angle_join.add_row(item):
                    self._add_joined(waiting, row)
                self.resolve_nominal(finishing=False)
        self.last_update = time.time()

    def add_reason(self, why: str, *, first: bool = False) -> None:
        """Add ``why`` to the scan's reason (``first``: ahead of what it says already):
        what the streams showed stays said when the scan then stops or its volume is cut."""
        if not self.reason:
            self.reason = why
        else:
            self.reason = f"{why}; {self.reason}" if first else f"{self.reason}; {why}"

    def reject(self, reason: str, detail: str, frame_index: int | None = None, *, counted: bool = False) -> None:
        self.admission.reject(reason, detail, frame_index, counted=counted)

    def _ensure_detector(self, msg: ReferenceRows | ProjectionRows) -> bool:
        """True: the message fits the detector and goes on now. Until a shape has
        SHAPE_AGREEMENT distinct frames and SHAPE_LEAD more than any other (or
        SHAPE_HOLD_FRAMES wait), messages wait here: malformed frames early must not
        decide the shape for the whole scan. Then they go on in order."""
        if self.state == "failed":
            self.reject("scan_refused", self.reason, msg.frame_index)
            return False
        detector = msg.detector
        if self.detector is None:
            voter = (msg.frame_index, msg.event)
            if voter not in self._shape_voters:
                self._shape_voters.add(voter)
                self._shape_votes[detector] += 1
            self._held.append(with_own_rows(msg))
            votes = self._shape_votes[detector]
            others = max((n for d, n in self._shape_votes.items() if d != detector), default=0)
            if votes >= SHAPE_AGREEMENT and votes - others >= SHAPE_LEAD:
                self._settle_detector(detector)
            elif len(self._held) >= SHAPE_HOLD_FRAMES:
                self.release_held()
            return False
        if (detector.rows, detector.cols) != (self.detector.rows, self.detector.cols):
            self.reject(
                "wrong_shape",
                f"frame {msg.frame_index} has shape {detector.rows}x{detector.cols}, "
                f"the detector is {self.detector.rows}x{self.detector.cols} (agreed by the first frames)",
                msg.frame_index,
            )
            return False
        if detector.dtype != self.detector.dtype:
            # Its counts are not the references': a float frame scaled 0..1, a uint8 tail.
            self.reject(
                "wrong_dtype",
                f"frame {msg.frame_index} has pixels of {detector.dtype}, the detector's are {self.detector.dtype} "
                "(agreed by the first frames)",
                msg.frame_index,
            )
            return False
        return True

    def release_held(self) -> None:
        """Settle on the shape most held frames have (the earliest on a tie): at the
        end of a scan too short to reach agreement, or once SHAPE_HOLD_FRAMES wait."""
        if self.detector is not None or not self._held:
            return
        most = max(self._shape_votes.values())
        first = next(m for m in self._held if self._shape_votes[m.detector] == most)
        self._settle_detector(first.detector)

    def _settle_detector(self, detector: DetectorInfo) -> None:
        held, self._held = self._held, []
        try:
            fitted, misfit = fit_to_detector(self.config, detector)
            geometry = LiveSliceGeometry(fitted, detector)
            check_memory_budget(fitted, detector, geometry)
        except (ConfigError, MemoryBudgetError) as error:  # settings that do not fit this detector
            self.state, self.reason = "failed", str(error)
            logger.warning("scan refused: %s", error)
        else:
            if misfit:
                # What the scan takes is what it publishes (its parameters, the final
                # file): they named a centre the slices were not made with.
                self.config = fitted
                self.admission.notice("settings_do_not_fit", misfit)
            self.detector, self.geometry = detector, geometry
            self._check_kept_references()
            grid = AngleGrid.of(self.config)
            self.sinogram = SinogramAssembler(len(geometry.sinogram_rows), grid, detector.cols, self.pool)
            self.ledger = self._new_ledger(geometry)
            self.state = "running"
            logger.info(
                "scan started: detector %dx%d %s, %d sinogram rows, live slices at rows %s",
                detector.rows,
                detector.cols,
                detector.dtype,
                len(geometry.sinogram_rows),
                ", ".join(str(int(r)) for r in geometry.slice_rows),
            )
        for msg in held:  # in arrival order, now against the settled detector
            if isinstance(msg, ReferenceRows):
                self._add_reference(msg)
            else:
                self._add_projection(msg)

    def reference_footprint(self) -> str:
        """Where this scan's reference sets lie on the detector
        (:attr:`LiveSliceGeometry.footprint`); "" before the detector is known."""
        return "" if self.geometry is None else self.geometry.footprint

    def _check_kept_references(self) -> None:
        """An earlier scan's set (keep_references) applies only where it lies on the same
        detector rows as this scan's: shapes alone let darks of other rows (rows 0:4
        kept, 4:8 now) correct every projection, and a kept set of another shape made a
        scan whose darks came alone fail at every projection (an exception each)."""
        kept = self.references.kept
        if kept is None or self.geometry is None:
            return
        unfit = self.geometry.unfit(kept)
        if not unfit:
            return
        self.references.forget_kept()
        if takes_both_kinds_first(self.config):
            return  # its own darks and flats come before every projection: not needed
        self.admission.notice(
            "kept_references_unfit", f"the darks and flats kept from an earlier scan {unfit}: not used"
        )

    def _add_reference(self, ref: ReferenceRows) -> None:
        broadcast = self.admission.is_copy(ref.frame_index, ref.event) or (
            ref.event < 0 and ref.frame_index in self._reference_frames
        )
        if broadcast:
            # Distributed mode broadcasts darks and flats to every worker;
            # reference_senders of them send the rows (every one where the workers
            # could not tell which: no record of the controller's assignments).
            self.admission.counts["reference_copies"] += 1
            self.admission.counts["reference_copies_with_rows"] += 1
            return
        if not self._ensure_detector(ref) or not self.admission.first_time(ref.frame_index, ref.event, ref.digest):
            return
        current = self.references.current
        if (
            self.late.takes(ref.frame_index)
            and current is not None
            and self.references.inherits(current, self.late.first_version, ref.key)
        ):
            # A newer batch took its dark (or flat) from the set lacking this one: made
            # again, the older set alone would have it, and the newer one not.
            self._take_missing_for_lost(besides=ref.frame_index)
        if self.late.came_too_late(ref.frame_index):
            self._reference_frames.add(ref.frame_index)  # its other workers' copies are copies
            self.reject(
                "reference_too_late",
                f"{ref.key.name.lower()} {ref.frame_index} came after its batch had been closed without it and the "
                "projections had gone on without it: not used",
                ref.frame_index,
            )
            return
        self.admission.accept("darks" if ref.key == ImageKey.DARK else "flats")
        self._reference_frames.add(ref.frame_index)
        # A grid of its pixels is enough for a level: microseconds, not a pass over the frame.
        grid = ref.rows[:: max(1, ref.rows.shape[0] // 64), :: max(1, ref.rows.shape[1] // 64)]
        level = float(np.mean(grid, dtype=np.float64))  # type: ignore[arg-type]  # integer or float pixels
        self.reference_levels.append((ref.key, ref.frame_index, level))
        if not (self.late.takes(ref.frame_index) and self._complete_late(ref)):
            self.references.add(ref.key, ref.frame_index, ref.rows)
        self._advance()

    def _add_joined(self, msg: ProjectionRows, row: AngleRow) -> None:
        if (
            row.angle_deg is None
            and (row.reason or "missing_angle") == "missing_angle"
            and self.config.nominal_angles_checked()
        ):
            # Its own row's event brought none it could read (a header, junk): if the
            # PandA's rows were shifted too, the row is nearby, found by its angle.
            self._add_projection(dataclasses.replace(msg, angle_row=NOMINAL_ROW))
            return
        if row.angle_deg is None:
            self.reject(
                row.reason or "missing_angle", f"frame {msg.frame_index}: {row.detail or 'no angle'}", msg.frame_index
            )
            return
        self.angle_join.joined_frames.add((msg.frame_index, msg.event))
        self._add_projection(self.angle_join.with_angle(msg, row))

    def take_unjoined_by_angle(self) -> list[ProjectionRows]:
        """The scan is over: frames whose own PandA row never came go to the nominal
        search (check_nominal_angles: their row may be in the event before, the PandA
        having lost a row or the header's END taken one's place); the rest are returned."""
        unjoined = self.angle_join.take_unjoined()
        if not self.config.nominal_angles_checked():
            return unjoined
        for msg in unjoined:
            self._add_projection(dataclasses.replace(msg, angle_row=NOMINAL_ROW))
        return []

    def _add_projection(self, msg: ProjectionRows) -> None:
        if msg.angle_row >= 0:
            joined = self.angle_join.defer(msg)
            if joined is not None:
                self._add_joined(*joined)
            return
        if not self._ensure_detector(msg):
            return
        if self.admission.is_copy(msg.frame_index, msg.event):
            # The admitted copy itself, from another worker: a stream shifted by a
            # message put this projection in an event sent to every worker. One frame,
            # no duplicate (it was counted rejected, and received once per worker).
            self.admission.counts["projection_copies"] += 1
            self._take_back_duplicate(msg)
            return
        if not self.admission.first_time(msg.frame_index, msg.event, msg.digest):
            self._take_back_duplicate(msg)
            return
        self.admission.counts["frames"] += 1
        self.last_frame_time = time.time()
        self.references.note_projection(msg.frame_index)
        self.late.projection_arrived(msg.frame_index)
        if not msg.angle_measured:
            self.admission.counts["nominal_angles"] += 1
        # A version not known yet: the worker built the set from the broadcast darks and
        # flats before this reducer closed the same batch; it waits like the rest.
        self._waiting.append(msg)
        self._advance()

    def _take_back_duplicate(self, msg: ProjectionRows) -> None:
        """A second copy of a frame is not averaged in: if its worker already summed it
        (possibly at another angle), the ledger takes exactly that contribution out."""
        if self.ledger is None or self.geometry is None or msg.event < 0:
            return
        if (msg.frame_index, msg.event) in self.ledger.records:
            return  # the same copy again (one event delivered twice): nothing to tell apart
        self._take_out_of_sums(msg)

    def _take_out_of_sums(self, msg: ProjectionRows) -> None:
        """What ``msg``'s worker summed of it, out of every product: exactly (a record
        whose target is zero) when it was summed with these settings; withdrawn when with
        settings this reducer has not applied yet (a live change on its way: after the
        change its sums would count the copy). Raw rows were summed by no worker."""
        assert self.geometry is not None and self.ledger is not None
        if not msg.reference_version:
            return
        key = (msg.frame_index, msg.event)
        if msg.recon_id == self.geometry.recon_id:
            rows = np.asarray(msg.rows, dtype=np.float32)[self.geometry.slice_positions]
            self.ledger.place(key, REJECTED_SLOT, msg.angle_deg, np.zeros_like(rows), rows)
        else:
            self._withdraw(key)

    def _withdraw(self, key: FrameKey) -> None:
        self._withdrawn.add(key)
        if self.ledger is not None:
            self.ledger.withdraw(key)

    def _new_ledger(self, geometry: LiveSliceGeometry) -> ContributionLedger:
        ledger = ContributionLedger(geometry)
        for key in self._withdrawn:
            ledger.withdraw(key)
        return ledger

    # -- references -----------------------------------------------------------------
    def _batch_ready(self) -> list[int] | None:
        """Whether the open batch can close: the frames missing from it ([] when
        complete), or None while it waits.

        It is complete when a projection follows it and every frame between the batch's
        first frame and that projection has arrived. Results arrive out of order, so a
        projection alone does not prove that the darks and flats before it are all
        here. With kind_rule counts the layout says which frames are darks and flats:
        the batch starts at its layout's first (a late first frame is missed
        otherwise), and a missing projection is nothing to wait for; without it the
        batch reaches back to the last projection before it. A lost frame
        would block forever: past a bound of waiting projections the batch closes
        anyway, and the frames it lacks are still taken should they come
        (:meth:`_complete_late`).
        """
        first = self.references.open_first_index
        if first is None:
            return None
        after = [m.frame_index for m in self._waiting if m.frame_index > first]
        if not after:
            return None
        seen = self.admission.seen
        lower = first
        if self.config.kind_rule == "counts":
            # The layout of the configuration now: a change before the first frame
            # (n_flats_before, say) left the scan's first layout in use.
            layout = FrameKindRule.from_config(self.config)
            while lower > 0 and layout.by_position(lower - 1) in REFERENCE_KINDS:
                lower -= 1
            missing = [
                i for i in range(lower, min(after)) if i not in seen and layout.by_position(i) in REFERENCE_KINDS
            ]
        else:
            # No layout (kind_rule header): the batch reaches back to the projection
            # before it; the frames between that are not here may be its late first darks
            # or flats (flats retaken mid-scan: the first one a projection late was left
            # out, and became a batch of its own), or projections still on their way.
            while lower > 0 and ((lower - 1) not in seen or (lower - 1) in self._reference_frames):
                lower -= 1
            missing = [i for i in range(lower, min(after)) if i not in seen]
        if not missing:
            return []
        return missing if len(after) > self._wait_bound() else None

    def _wait_bound(self) -> int:
        """Projections that may wait for darks or flats that may never come (lost)."""
        return max(4 * self.config.flush_every, 32)

    def _awaits_references(self, msg: ProjectionRows) -> bool:
        """Its worker had taken a dark or flat that is not here yet (:attr:`ProjectionRows.
        references_through`): flats retaken mid-scan, still on their way through another
        worker. Placed now, it took the old set for good (nothing knew a new one was coming).
        Not a frame its batch closed without (:attr:`late`): placed with the set lacking
        it, it is corrected again should the frame come."""
        through = msg.references_through
        return (
            through >= 0
            and through not in self.admission.seen
            and through not in self._references_given_up
            and not self.late.takes(through)
            and not self.late.came_too_late(through)
        )

    def _give_up_awaited_references(self) -> None:
        """Past :meth:`_wait_bound` projections waiting for one dark or flat that does not
        come, they go on with those that are here (counted, with a warning). Per frame
        awaited: a flat retaken since, still on its way, is waited for on its own count."""
        waiting = Counter(m.references_through for m in self._waiting if self._awaits_references(m))
        awaited = {index for index, count in waiting.items() if count > self._wait_bound()}
        if not awaited:
            return
        self._references_given_up |= awaited
        self.admission.counts["references_awaited_in_vain"] += len(awaited)
        logger.warning(
            "darks or flats %s, taken before projections that are here, have not come after %d of those "
            "projections: the projections are corrected with the darks and flats that are here",
            sorted(awaited),
            self._wait_bound(),
        )

    def _advance(self) -> None:
        """Close the reference batch when complete; place projections that can be."""
        missing = self._batch_ready()
        if missing == []:
            self.references.close_batch()
        elif missing:
            if self.late.awaiting:
                self._give_up_missing_references(now=True)  # one batch closed incomplete at a time
            self.late.closing(missing)
            closed = self.references.close_batch(incomplete=True)
            self.late.closed(None if closed is None else closed.version)
            if closed is not None:
                self.admission.counts["references_closed_incomplete"] += 1
                logger.warning(
                    "darks and flats before frame %d: closed without frames %s after %d projections waited "
                    "(they are taken should they still come)",
                    closed.before_index + 1,
                    ranges_text(index_ranges(missing)),
                    self._wait_bound(),
                )
        self._give_up_awaited_references()
        self._give_up_missing_references()
        first = self.references.open_first_index
        still: list[ProjectionRows] = []
        # Each message leaves the queue before it is placed: should a placement raise (a
        # bug), the frames placed before it are not placed twice by the next call, and
        # the one that failed does not fail again in front of every later frame.
        pending = collections.deque(self._waiting)
        try:
            while pending:
                msg = pending.popleft()
                refs = self.references.applicable(msg.frame_index)
                if refs is None or (first is not None and msg.frame_index > first) or self._awaits_references(msg):
                    still.append(with_own_rows(msg))  # copied once: a copy owns its rows
                elif msg.reference_version and not self.references.knows(msg.reference_version):
                    if self.late.awaiting:
                        # Its worker may have the frames the reducer's set lacks.
                        still.append(with_own_rows(msg))
                    else:
                        # Its worker's set is none of ours and no batch is open to become it.
                        self.reject_unknown_references(msg)
                else:
                    self.place(msg, refs)
        finally:
            self._waiting = still + list(pending)
        if still and not self._waiting_logged:
            self._waiting_logged = True
            logger.info("projections wait for their darks and flats (%d so far)", len(still))

    @property
    def missing_references(self) -> list[int]:
        """Darks and flats the batch closed incomplete lacks, while they are waited for."""
        return sorted(self.late.missing)

    def _give_up_missing_references(self, now: bool = False) -> None:
        """Past :meth:`_wait_bound` more projections since the batch closed incomplete
        (``now``: another batch closes so), the frames it lacks are taken for lost.
        Projections corrected with a set this reducer does not know (the whole batch,
        built by their worker) are then rejected: their set is not here to undo. The
        workers are given the reducer's set for those to come, unless a newer one
        replaced it."""
        if not (self.late.due(self._wait_bound()) or (now and self.late.awaiting)):
            return
        arrived = self.late.arrived
        lost = self._take_missing_for_lost()
        logger.warning(
            "darks or flats %s have not come %d projections after their batch closed without them: projections "
            "corrected with them by the workers are rejected, and the workers are given the darks and flats that are here",
            ranges_text(index_ranges(lost)),
            arrived,
        )
        current = self.references.current
        if current is not None and current.version == self.late.version:
            self.references.worker_lacks(current)

    def _take_missing_for_lost(self, besides: int | None = None) -> list[int]:
        """The frames the incomplete batch still lacks are lost (counted as never came,
        ``besides`` the one that came too late); its sums go. Returns them."""
        lost = self.late.give_up()
        self.references.drop_incomplete()
        self.admission.counts["references_never_came"] += sum(1 for index in lost if index != besides)
        return lost

    def _complete_late(self, ref: ReferenceRows) -> bool:
        """A dark or flat the batch closed incomplete lacked: the batch's set is made
        again with it, and the projections placed with the lacking set are corrected
        again (their slots hold -log transmission: undone with the old set, redone).
        False when no batch was kept for it (the caller adds it as any other)."""
        made = self.references.complete_late(ref.key, ref.frame_index, ref.rows)
        if made is None:
            return False
        superseded, refs = made
        self.late.joined(ref.frame_index, refs.version)
        self.admission.counts["references_came_late"] += 1
        placed = list(self.late.placed)
        if not self.late.awaiting:
            self.late.placed.clear()
            self.references.drop_incomplete()
        if placed and self.sinogram is not None and self.ledger is not None:
            by_slot: dict[int, list[FrameKey]] = collections.defaultdict(list)
            for key in placed:
                record = self.ledger.records.get(key)
                if record is not None and record.slot >= 0:
                    by_slot[record.slot].append(key)
            before = self.references.corrector(superseded.version)
            after = self._corrector(refs.version)
            self.recorrect_slots(by_slot, before, lambda _keys: after)
        return True

    def recorrect_slots(
        self,
        by_slot: dict[int, list[FrameKey]],
        before: Corrector,
        corrector_for: Callable[[list[FrameKey]], Corrector],
    ) -> None:
        """Correct the slots' -log transmission again: undone with ``before``, redone
        with ``corrector_for(frames of the slot)``. A slot that also holds frames not
        named (another batch's) is left as it is: its mean cannot be split."""
        assert self.sinogram is not None and self.geometry is not None and self.ledger is not None
        holding: dict[int, int] = collections.Counter(r.slot for r in self.ledger.records.values() if r.slot >= 0)
        for slot, keys in by_slot.items():
            if holding[slot] != len(keys):
                continue
            stored = self.sinogram.by_angle[slot]
            stored[...] = corrector_for(keys).correct(before.uncorrect(stored))
            self.sinogram.dirty_slots.add(slot)
            for key in keys:
                # The slot's mean stands in for the frame's rows (see reconfigure).
                self.ledger.records[key].values = np.ascontiguousarray(stored[self.geometry.slice_positions])
            self.ledger.slot_changed(slot)

    # -- placement ------------------------------------------------------------------
    def place(self, msg: ProjectionRows, refs: ReferenceSet, worker_angle_deg: float | None = None) -> None:
        """Put a projection into the sinogram and the live products. ``worker_angle_deg``:
        its worker summed it at that angle (another frame's), so the ledger moves it."""
        assert self.sinogram is not None and self.geometry is not None and self.ledger is not None
        geometry = self.geometry
        # Held since (a nominal-angle check, say) with a set made again from its batch
        # with a frame that came late: the new set.
        refs = self.references.current_for(refs)
        if msg.angle_row == NOMINAL_ROW:
            self._hold_for_nominal_row(msg, refs)
            return
        try:
            slot = self.sinogram.grid.slot(msg.angle_deg)
            expected = (
                None
                if worker_angle_deg is not None
                else self.nominal.expected_slot(self.config, self.sinogram.grid, msg.frame_index)
            )
            if expected is not None and expected != slot:
                self.nominal.hold(msg, refs, slot, expected)
                self.resolve_nominal(finishing=False)
                return
        except UnknownAngleError as error:
            self._reject_placed(
                msg, "unknown_angle", f"frame {msg.frame_index}: {error}; {self._measured_step(msg.angle_deg)}"
            )
            return
        angle = self.sinogram.grid.same_turn(msg.angle_deg, slot)
        rows = np.asarray(msg.rows)
        worker_rows: FloatArray | None = None
        repaired = msg.pixels_repaired
        if msg.reference_version != refs.version:
            self.references.worker_lacks(refs)
        if msg.reference_version == 0:
            self.admission.counts["corrected_by_reducer"] += 1
            values, repaired = self._corrector(refs.version).correct_counted(rows)
        elif msg.reference_version != refs.version:
            self.admission.counts["recorrected_stale"] += 1
            raw = self.references.corrector(msg.reference_version).uncorrect(rows.astype(np.float32))
            values, repaired = self._corrector(refs.version).correct_counted(raw, fast=False)
            worker_rows = rows[geometry.slice_positions].astype(np.float32)
        if msg.reference_version != refs.version:  # corrected here: judged here (the worker judged its own)
            unusable = unusable_projection(self._corrector(refs.version), msg.frame_index, repaired, values.size)
            if unusable is not None:
                self._reject_placed(msg, *unusable)
                return
        else:
            # The common path: the worker corrected with the current set (finite by
            # construction: it repairs or rejects NaN/inf), so the rows go in as they are.
            values = rows.astype(np.float32, copy=False)
        if msg.reference_version != refs.version and not np.isfinite(values).all():
            self.admission.counts["frames_nonfinite_repaired"] += 1
            values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        self._note_angles_sharing(msg.frame_index, slot, angle)
        count = self.sinogram.place(slot, angle, values)
        self.admission.counts["projections"] += 1
        self.admission.counts["pixels_repaired"] += repaired
        slice_values = values[geometry.slice_positions]
        if msg.reference_version == refs.version:
            worker_rows = slice_values
        if msg.recon_id != geometry.recon_id:
            worker_rows = None  # made with other settings: its partial sum is dropped
        self.ledger.place((msg.frame_index, msg.event), slot, angle, slice_values, worker_rows, worker_angle_deg)
        self.late.note_placed((msg.frame_index, msg.event), refs.version)
        if count > 1:
            self.ledger.slot_changed(slot)

    def reject_unknown_references(self, msg: ProjectionRows) -> None:
        """A projection its worker corrected with darks and flats this reducer never
        made: rejected, and taken out of the sums its worker put it in (it stayed in the
        live and final slices, in no sinogram slot)."""
        self._reject_placed(
            msg,
            "unknown_references",
            f"frame {msg.frame_index} was corrected with darks and flats this reducer never made",
        )

    def _reject_placed(self, msg: ProjectionRows, reason: str, detail: str) -> None:
        """Reject a projection that came to be placed; one its worker already summed
        (corrected there, with these settings) the ledger takes out of every product."""
        self.reject(reason, detail, msg.frame_index, counted=True)
        self._take_out_of_sums(msg)

    def _hold_for_nominal_row(self, msg: ProjectionRows, refs: ReferenceSet) -> None:
        """A projection with no readable PandA row of its own (:data:`NOMINAL_ROW`): held
        until the rows around it are here, then placed at the one with its nominal angle."""
        assert self.sinogram is not None
        expected = self.nominal.expected_slot(self.config, self.sinogram.grid, msg.frame_index)
        if expected is None:  # not a projection of the configured order: no nominal angle to look for
            detail = f"frame {msg.frame_index}: no readable PandA row of its own, and it has no nominal angle"
            self.reject("missing_angle", detail, msg.frame_index, counted=True)
            return
        self.nominal.hold(msg, refs, None, expected)
        self.resolve_nominal(finishing=False)

    def resolve_nominal(self, finishing: bool) -> None:
        """Place held frames whose PandA row was found; reject those without one."""
        if self.sinogram is None or self.geometry is None or self.ledger is None or not self.nominal.pending:
            return
        for verdict in self.nominal.resolve(self.config, self.sinogram.grid, self.angle_join.rows, finishing):
            msg = verdict.msg
            if verdict.angle_deg is None:
                # A frame that came without any angle keeps the reason it had.
                reason = "missing_angle" if msg.angle_row == NOMINAL_ROW else "angle_mismatch"
                self._reject_placed(msg, reason, verdict.detail)
                continue
            self.angle_join.joined_frames.add((msg.frame_index, msg.event))
            if another_projections_row(self.config, msg.frame_index, verdict.row):
                self.nominal_found += 1
            moved = dataclasses.replace(msg, angle_deg=verdict.angle_deg, angle_row=-1)
            self.place(moved, verdict.refs, worker_angle_deg=msg.angle_deg)

    def _note_angles_sharing(self, index: int, slot: int, angle_deg: float) -> None:
        """Count ``angles_share_slot`` when a frame joins a slot whose frames were measured
        at another angle (a quarter step or more away): they are averaged as one angle.
        Angles half a step off the grid (a PandA's mid-exposure mean on a grid of exposure
        starts) were filed into every second slot, two projections each, two steps
        apart, with the other slots empty and nothing said."""
        assert self.sinogram is not None
        earlier = self.sinogram.mean_angle(slot)
        grid = self.sinogram.grid
        if earlier is None or abs(angle_deg - earlier) < ANGLES_APART_STEPS * grid.step:
            return
        offset = (angle_deg - grid.start) / grid.step - slot
        self.admission.notice(
            "angles_share_slot",
            f"frame {index} at {angle_deg:.4f} deg joins slot {slot} ({grid.start + grid.step * slot:.4f} deg), "
            f"whose frames were measured at {earlier:.4f} deg: averaged as one angle. "
            + self._grid_advice(angle_deg, offset),
        )

    def _grid_advice(self, angle_deg: float, offset: float) -> str:
        """How the grid would fit the measured angles, this one ``offset`` steps off: by
        its start, unless the angles fit a step of their own clearly better (:func:`fitted_step`).
        A step 1/3000 too small (angle_range 180 for 3001 projections over 180.06
        degrees) drifts half a step by the scan's middle, and the advice to move
        angle_start by that half step only moved the sharing elsewhere."""
        assert self.sinogram is not None
        grid = self.sinogram.grid
        step = fitted_step(self._measured_angles(angle_deg), grid.start, grid.step, offset, grid.n)
        if step is not None:
            return (
                f"The measured angles step by about {step:.6g} deg, not as {grid.describe()} does: "
                f"angle_step {step:.6g} (or angle_range {step * grid.n:.6g}) fits them"
            )
        return (
            f"The measured angles sit {offset:+.2f} step off {grid.describe()}; if they all do, angle_start "
            f"{grid.start + offset * grid.step:.6g} puts them on it"
        )

    def _measured_angles(self, angle_deg: float) -> npt.NDArray[np.float64]:
        """The filled slots' measured angles, and ``angle_deg``."""
        assert self.sinogram is not None
        return np.append(self.sinogram.angles()[self.sinogram.filled_slots()], angle_deg)

    def _measured_step(self, angle_deg: float) -> str:
        """What step the measured angles so far show, next to the grid's (for people
        who have to fix angle_range or angle_step)."""
        assert self.sinogram is not None
        measured = median_spacing(np.unique(self._measured_angles(angle_deg)), 1e-6)
        if measured is None:
            return "too few measured angles to tell their step"
        hint = ""
        if abs(measured - self.sinogram.grid.step) > 0.01 * self.sinogram.grid.step:
            hint = f": set angle_step={measured:.6g} if that is the scan's step"
        return f"the measured angles so far step by {measured:.6g} deg{hint}"

    def _corrector(self, version: int) -> Corrector:
        return self.references.corrector(version, self.config.pixel_repair, self.config.saturation_level)

    # -- reconciliation and settings changes ----------------------------------------
    def reconcile(self, backfill: bool = False) -> int:
        if self.ledger is None or self.sinogram is None:
            return 0
        done = self.ledger.reconcile(self.sinogram.counts, backfill)
        if backfill:
            self.admission.counts["backfilled"] += done
        return done

    def reconfigure(self, config: PipelineConfig) -> None:
        """New live settings (centre, filter, ...): rebuild the live products (slices,
        sweep, window) from the sinogram."""
        geometry: LiveSliceGeometry | None = None
        if self.detector is not None:
            for name in FIXED_DURING_SCAN:
                if getattr(config, name) != getattr(self.config, name):
                    raise ValueError(f"{name} cannot change during a scan (now {getattr(self.config, name)!r})")
            geometry_config = config
            if config.center == "auto" and self.auto_center is not None:
                # The scan's estimate (resolve_auto_center), not the detector middle: a
                # filter change after the end kept 'auto' and moved the slices' axis.
                geometry_config = dataclasses.replace(config, center=f"{self.auto_center:.3f}")
            # Validates before applying: a value stored before the first frame (the
            # detector unknown then) comes back with every later change of parameters.
            geometry_config.check_live_bounds(self.detector.rows, self.detector.cols)
            geometry = LiveSliceGeometry(geometry_config, self.detector)
        self.config = config
        if geometry is None or self.sinogram is None or self.ledger is None:
            return
        self.geometry = geometry
        self._rebuild_ledger()
        done = self.reconcile(backfill=True)
        logger.info("live settings changed (%s): rebuilt %d projections", geometry.recon_id, done)

    def rebuild_products(self) -> None:
        """The live products from the sinogram alone, the worker sums dropped: what the
        end of a scan does when sums hold frames the sinogram does not (the ledger is
        :attr:`~ContributionLedger.tainted`). The caller reconciles (backfill)."""
        if self.geometry is not None and self.sinogram is not None and self.ledger is not None:
            self._rebuild_ledger()

    def _rebuild_ledger(self) -> None:
        """A new ledger of :attr:`geometry` whose frames are all still to backproject."""
        assert self.geometry is not None and self.sinogram is not None and self.ledger is not None
        geometry = self.geometry
        old, self.ledger = self.ledger, self._new_ledger(geometry)
        # Each frame of a slot contributes slot mean / count, so the slot mean stands in
        # for every frame's own rows (the slice rows may have changed). Nothing of the
        # old sums is kept: partial sums made with the new settings before this point
        # cannot be told apart, so the ledger drops them and rebuilds here.
        for key, record in old.records.items():
            if record.slot == REJECTED_SLOT:
                continue
            values = np.ascontiguousarray(self.sinogram.by_angle[record.slot][geometry.slice_positions])
            self.ledger.place(key, record.slot, record.angle_deg, values, None)
        self.ledger.slot_ratio = old.slot_ratio
        self.ledger.counts = old.counts  # what the scan's sums did, across rebuilds

    def finish(self, volume_follows: bool = False) -> None:
        """Everything arrived: late references, weights, backfill, auto centre, exact sweep.

        ``volume_follows``: the state becomes 'reconstructing' (the reducer's volume job
        says 'finished' with the last volume slices) instead of 'finished'.
        """
        self.ended = True
        scan_end.finish(self, volume_follows)

    def take_waiting(self) -> list[ProjectionRows]:
        waiting, self._waiting = self._waiting, []
        return waiting

    # -- outputs --------------------------------------------------------------------
    @property
    def n_projections(self) -> int:
        return 0 if self.sinogram is None else self.sinogram.n_filled

    def slices_sum(self) -> tuple[FloatArray, float] | None:
        """The live slices as (unweighted sum, weight): the last half turn in 'window'
        mode while the scan runs, otherwise (and at the end) every projection."""
        if self.ledger is None:
            return None
        if self.state == "running":
            window = self.ledger.window_sum()
            if window is not None:
                return window[0], pi_over_2n(window[1])
        return self.ledger.live_sum, pi_over_2n(self.n_projections)

    def slices_projections(self) -> int:
        """The projections the live slices are weighted with (:meth:`slices_sum`): the
        window's in 'window' mode while the scan runs, every projection otherwise."""
        if self.ledger is not None and self.state == "running":
            window = self.ledger.window_count()
            if window is not None:
                return window
        return self.n_projections

    def slices(self) -> FloatArray | None:
        """Weighted live slices (a new array)."""
        found = self.slices_sum()
        return None if found is None else found[0] * np.float32(found[1])

    def sweep_sum(self) -> tuple[FloatArray, float] | None:
        if self.ledger is None or self.ledger.sweep_sum is None:
            return None
        # Weighted like the slices: the ledger makes both the same frames' sums.
        return self.ledger.sweep_sum, pi_over_2n(self.n_projections)

    def sweep_slices(self) -> FloatArray | None:
        found = self.sweep_sum()
        return None if found is None else found[0] * np.float32(found[1])

    def sweep_centers(self) -> npt.NDArray[np.float64]:
        assert self.geometry is not None
        return np.asarray(self.geometry.sweep_centers, dtype=np.float64)

    def lost_frames(self) -> list[tuple[int, int]]:
        """Frame index ranges (inclusive) that never arrived; known once the scan has
        ended (:attr:`ended`), failed ones too: a scan that failed with frames missing
        said "0 lost" where it had lost them. Not while it runs, even once it has
        failed (a refused scan fails at its first frames): the rest may still come."""
        expected = self.config.expected_frames()
        if expected is None or not self.ended:
            return []
        return self.admission.lost_ranges(expected)

    def status(self) -> dict[str, int | float | str]:
        missing = 0 if self.sinogram is None else len(self.sinogram.missing_slots())
        lost = sum(b - a + 1 for a, b in self.lost_frames())
        return {
            "state": self.state,
            "frames_received": self.admission.received,
            "frames_rejected": self.admission.frames_rejected,
            "darks": self.admission.counts["darks"],
            "flats": self.admission.counts["flats"],
            "projections": self.admission.counts["projections"],
            "missing_angles": missing,
            "pending_projections": len(self._waiting),
            "frames_lost": lost,
            "volume_slices_done": self.volume_done,
            "pixels_repaired": self.admission.counts["pixels_repaired"],
            "angles_joined": self.angle_join.joined,
        }

    def snapshot(self) -> ScanSnapshot:
        """What the live domain shows now (see :func:`.snapshot.take_snapshot`)."""
        return take_snapshot(self)
