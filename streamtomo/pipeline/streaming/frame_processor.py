"""The worker's per-frame work, free of dranspose: check, bin, correct, extract, backproject.

One :class:`FrameProcessor` per worker. It keeps the references it was given (a
dranspose binary parameter set by the reducer), the live reconstruction settings,
and unweighted partial sums of everything linear the live domain shows: the live
slices (per window block in ``live_mode='window'``) and the centre-of-rotation
sweep. It hands them out on :meth:`flush`; the reducer only adds them, so every
per-projection computation runs here, in parallel over the workers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from typing import Any

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.config import ConfigError, PipelineConfig
from streamtomo.pipeline.correction.corrector import Corrector, unusable_projection
from streamtomo.pipeline.correction.references import ReferenceSet
from streamtomo.pipeline.formats.limits import MAX_FRAME_BYTES
from streamtomo.pipeline.messages import (
    NOMINAL_ROW,
    DetectorInfo,
    PartialSum,
    ProjectionRows,
    ReferenceRows,
    Rejected,
    frame_digest,
)
from streamtomo.pipeline.reconstruction.interleaved import InterleavedSlices
from streamtomo.pipeline.scan import ImageKey
from streamtomo.pipeline.streaming.binning import bin_frame
from streamtomo.pipeline.streaming.broadcast_references import BroadcastReferences
from streamtomo.pipeline.streaming.live_geometry import LiveSliceGeometry, geometry_for

logger = logging.getLogger(__name__)
RECENT_EVENTS = 16  # projections workers_sharing() looks back over

# A few NaN/inf pixels are repaired (set to 0 after -log); more means a broken frame.
MAX_NONFINITE_FRACTION = 0.01

Message = ReferenceRows | ProjectionRows | PartialSum | Rejected


class FrameProcessor:
    def __init__(self, config: PipelineConfig, worker_name: str = "worker") -> None:
        self.config = config
        self.worker_name = worker_name
        self.detector: DetectorInfo | None = None
        self.geometry: LiveSliceGeometry | None = None
        self.references: ReferenceSet | None = None  # the set in use
        self._shared: ReferenceSet | None = None  # the reducer's (dranspose parameter)
        self._broadcast = BroadcastReferences(config)  # the one built here, if it can be
        self._corrector: Corrector | None = None
        # Live slices summed since the last partial sum, by window block (0 outside
        # window mode), and emptied ones kept for the next blocks of the same geometry.
        self._blocks: dict[int, InterleavedSlices] = {}
        self._spare_blocks: list[InterleavedSlices] = []
        self._partial_frames: list[tuple[int, int]] = []  # (frame index, event) summed so far
        # The events of this worker's latest projections, across partial sums: how many
        # workers share the stream (workers_sharing), also when each sum holds one.
        self._recent_events: deque[int] = deque(maxlen=RECENT_EVENTS)
        self._partial_started = 0.0  # when the first projection of the pending partial sum came
        # Frames seen per shape and pixel type: a frame of another type is another
        # detector's (a float frame scaled 0..1 in a uint16 scan, a uint8 tail), whose
        # counts the references do not describe.
        self._shape_votes: Counter[DetectorInfo] = Counter()
        # One DetectorInfo per (shape, pixel type) seen: a frame's is a dict lookup,
        # not a new object and a dtype's name each time (microseconds a frame).
        self._detectors: dict[tuple[tuple[int, ...], np.dtype[Any]], DetectorInfo] = {}
        # The newest dark or flat taken here (ProjectionRows.references_through).
        self._references_through = -1
        self._refused_references: set[int] = set()  # versions said not to fit (logged once)

    # -- settings -------------------------------------------------------------------
    def configure(self, config: PipelineConfig) -> PartialSum | None:
        """Apply new settings; returns the pending partial sum made with the old ones."""
        pending = self.flush() if config != self.config else None
        if self.detector is not None and config.bin != self.config.bin:
            self.detector = None  # another binning: another detector shape
            self.set_references(None)
        if (config.kind_rule, config.first_projection()) != (self.config.kind_rule, self.config.first_projection()):
            self._broadcast = BroadcastReferences(config)  # a new scan's layout
            self._references_through = -1
        if (config.pixel_repair, config.saturation_level) != (self.config.pixel_repair, self.config.saturation_level):
            self._corrector = None  # it repairs by the old settings
        self.config = config
        self.geometry = None if self.detector is None else geometry_for(config, self.detector)
        self._spare_blocks = []
        return pending

    def set_references(self, references: ReferenceSet | None) -> None:
        """The reducer's references (None: it shared none yet); they take precedence."""
        if references is self._shared:
            return
        self._shared = references
        self._use(references if references is not None else self._broadcast.current)

    def _use(self, references: ReferenceSet | None) -> None:
        if references is self.references:
            return
        same = references is not None and self.references is not None and references.version == self.references.version
        self.references = references
        if not same:
            self._corrector = None

    def _corrector_for(self, geometry: LiveSliceGeometry) -> Corrector | None:
        if self.references is None:
            return None
        if self._corrector is None:
            refs = self.references
            unfit = geometry.unfit(refs)
            if unfit:
                if refs.version not in self._refused_references:  # said once, not per projection
                    self._refused_references.add(refs.version)
                    logger.warning("darks and flats %s: ignoring them", unfit)
                # The set this worker built from the scan's broadcast darks and flats, if
                # any: else every row went raw until the reducer's own set came round
                # (a stale shared set of other rows, posted by no play).
                own = self._broadcast.for_projection()
                if own is None or own is refs or geometry.unfit(own):
                    return None
                self.references = refs = own
            self._corrector = Corrector(
                refs.dark,
                refs.flat,
                refs.version,
                repair=self.config.pixel_repair,
                saturation_level=self.config.saturation_level,
            )
        return self._corrector

    def frame_bytes_limit(self) -> int:
        """The largest image a decoder should build for this worker: a few times the
        detector's frame once known (a compressed message that declares more is a bomb,
        refused before decompressing), the decoders' general bound before."""
        if self.detector is None:
            return MAX_FRAME_BYTES
        frame = self.detector.rows * self.detector.cols * self.config.bin**2 * 8
        return min(max(4 * frame, 64 << 20), MAX_FRAME_BYTES)

    # -- frames ---------------------------------------------------------------------
    def _check_frame(self, index: int, data: npt.NDArray[np.generic], event: int) -> Rejected | None:
        if data.ndim != 2:
            return Rejected(index, "wrong_shape", f"frame {index} has shape {data.shape}, expected 2-D", event)
        if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
            return Rejected(index, "wrong_dtype", f"frame {index} has dtype {data.dtype}", event)
        if data.shape[0] < 1 or data.shape[1] < 1:
            return Rejected(index, "wrong_shape", f"frame {index} has shape {data.shape}", event)
        return None

    def _detector_of(self, data: npt.NDArray[np.generic]) -> DetectorInfo:
        key = (data.shape, data.dtype)
        detector = self._detectors.get(key)
        if detector is None:
            detector = self._detectors[key] = DetectorInfo(int(data.shape[0]), int(data.shape[1]), str(data.dtype))
        return detector

    def _vote_shape(self, detector: DetectorInfo) -> PartialSum | None:
        """Count the frame's shape; the detector is the shape most frames had so far.

        A first frame does not fix the shape for good: a malformed one would make every
        good frame after it "wrong". Frames of another shape still go to the reducer
        (uncorrected), which decides by agreement over all workers.
        """
        self._shape_votes[detector] += 1
        current = self.detector
        if current == detector or (current is not None and self._shape_votes[detector] <= self._shape_votes[current]):
            return None
        geometry = geometry_for(self.config, detector)  # ConfigError: refused, nothing changed
        pending = self.flush() if current is not None else None
        if current is not None:
            logger.warning(
                "detector %dx%d %s: %d frames agree on it against %d of %dx%d %s",
                detector.rows,
                detector.cols,
                detector.dtype,
                self._shape_votes[detector],
                self._shape_votes[current],
                current.rows,
                current.cols,
                current.dtype,
            )
        self._corrector = None  # built again for the new shape, if the references fit it
        self._broadcast = BroadcastReferences(self.config)  # it may hold frames of the old shape
        self.detector, self.geometry = detector, geometry
        self._spare_blocks = []
        return pending

    def process(
        self,
        index: int,
        key: ImageKey,
        data: npt.NDArray[np.generic],
        angle_deg: float | None,
        angle_measured: bool = True,
        event: int = -1,
        angle_row: int = -1,
    ) -> list[Message]:
        """Handle one decoded frame; returns the messages for the reducer.

        ``event`` is the dranspose event number: with ``index`` it names this copy of
        the frame, so the reducer can tell a duplicate from a broadcast copy.
        ``angle_row`` >= 0: the angle is that of another event's PandA row, which only
        the reducer sees: the projection goes there uncorrected, to be joined.
        """
        if key in (ImageKey.INVALID, ImageKey.ALIGNMENT):
            return [
                Rejected(index, "dropped_kind", f"frame {index} has image_key {int(key)} ({key.name.lower()})", event)
            ]
        if self.config.bin > 1 and data.ndim == 2:
            if min(data.shape) < self.config.bin:  # it was 'shape (0, 0)', the binning unsaid
                rows, cols = data.shape
                detail = f"frame {index}: bin {self.config.bin} leaves no pixel of a {rows} x {cols} frame"
                return [Rejected(index, "wrong_shape", detail, event)]
            data = bin_frame(data, self.config.bin)
        rejected = self._check_frame(index, data, event)
        if rejected is not None:
            return [rejected]
        out: list[Message] = []
        detector = self._detector_of(data)
        try:
            pending = self._vote_shape(detector)
        except ConfigError as error:  # the reducer refuses the scan for the same reason
            return [Rejected(index, "scan_refused", f"frame {index}: {error}", event)]
        if pending is not None:
            out.append(pending)
        assert self.geometry is not None and self.detector is not None
        # With its rows, the frame's digest: the reducer tells a copy sent twice from a
        # number the detector repeated on another exposure (frame_digest).
        digest = frame_digest(data)
        if detector != self.detector:
            out.append(
                self._minority_frame(index, key, data, detector, angle_deg, angle_measured, event, angle_row, digest)
            )
            return out
        out.extend(self._process_frame(index, key, data, angle_deg, angle_measured, event, angle_row, digest))
        return out

    def _minority_frame(
        self,
        index: int,
        key: ImageKey,
        data: npt.NDArray[np.generic],
        detector: DetectorInfo,
        angle_deg: float | None,
        angle_measured: bool,
        event: int,
        angle_row: int,
        digest: int,
    ) -> Message:
        """A frame whose shape or pixel type most frames here do not have: sent as it is,
        for the reducer's decision (it rejects it as wrong_shape or wrong_dtype unless
        its kind wins there)."""
        geometry = geometry_for(self.config, detector)
        rows = np.ascontiguousarray(data if geometry.all_rows else data[geometry.sinogram_rows])
        if key in (ImageKey.DARK, ImageKey.FLAT):
            return ReferenceRows(index, key, rows, detector, event, digest)
        return self._uncorrected_projection(index, rows, detector, angle_deg, angle_measured, event, angle_row, digest)

    def _uncorrected_projection(
        self,
        index: int,
        rows: npt.NDArray[np.generic],
        detector: DetectorInfo,
        angle_deg: float | None,
        angle_measured: bool,
        event: int,
        angle_row: int,
        digest: int,
    ) -> Message:
        """A projection the reducer takes as measured: to join with its own PandA row
        (``angle_row`` >= 0, or the one with its nominal angle: :data:`NOMINAL_ROW`) or
        to correct there (no references here); refused without an angle."""
        rows = np.ascontiguousarray(rows)
        through = self._references_through
        if angle_row >= 0 or angle_row == NOMINAL_ROW:
            return ProjectionRows(
                index,
                float("nan"),
                True,
                rows,
                0,
                "",
                detector,
                event,
                angle_row,
                digest=digest,
                references_through=through,
            )
        if angle_deg is None or not np.isfinite(angle_deg):
            return Rejected(index, "missing_angle", f"projection {index} has no valid angle", event)
        return ProjectionRows(
            index, angle_deg, angle_measured, rows, 0, "", detector, event, digest=digest, references_through=through
        )

    def _process_frame(
        self,
        index: int,
        key: ImageKey,
        data: npt.NDArray[np.generic],
        angle_deg: float | None,
        angle_measured: bool,
        event: int,
        angle_row: int,
        digest: int,
    ) -> list[Message]:
        assert self.geometry is not None and self.detector is not None
        rows = data if self.geometry.all_rows else data[self.geometry.sinogram_rows]
        if key in (ImageKey.DARK, ImageKey.FLAT):
            self._references_through = max(self._references_through, index)
            if np.issubdtype(rows.dtype, np.floating) and not np.isfinite(rows).all():
                return [Rejected(index, "non_finite", f"{key.name.lower()} frame {index} has NaN/inf pixels", event)]
            reference = np.ascontiguousarray(rows)
            self._broadcast.add(key, index, reference)
            return [ReferenceRows(index, key, reference, self.detector, event, digest)]
        if self._shared is None and self.references is None:
            self._use(self._broadcast.for_projection())
        if np.issubdtype(rows.dtype, np.floating):
            bad = ~np.isfinite(rows)
            if bad.mean() > MAX_NONFINITE_FRACTION:
                return [
                    Rejected(
                        index, "non_finite", f"projection {index}: {bad.mean():.0%} of its pixels are NaN/inf", event
                    )
                ]
        has_angle = angle_deg is not None and bool(np.isfinite(angle_deg))
        corrector = self._corrector_for(self.geometry) if angle_row < 0 and has_angle else None
        if corrector is None or angle_deg is None:
            return [
                self._uncorrected_projection(
                    index, rows, self.detector, angle_deg, angle_measured, event, angle_row, digest
                )
            ]
        values, repaired = corrector.correct_counted(rows)
        unusable = unusable_projection(corrector, index, repaired, values.size)
        if unusable is not None:  # not summed: the reducer counts it, nothing to take back
            return [Rejected(index, *unusable, event)]
        # Integer frames give finite values by construction (the table is clipped).
        if np.issubdtype(rows.dtype, np.floating) and not np.isfinite(values).all():
            np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        out: list[Message] = [
            ProjectionRows(
                index,
                angle_deg,
                angle_measured,
                values,
                corrector.version,
                self.geometry.recon_id,
                self.detector,
                event,
                pixels_repaired=repaired,
                digest=digest,
                references_through=self._references_through,
            )
        ]
        self._backproject(index, values, angle_deg, event)
        # By count, or by age as on a tick: a frame coming is as good a moment to look
        # (ticks reach each of W workers only every W intervals; small sums, sent only
        # every 48 to 64 projections by count, would leave the live view behind).
        if len(self._partial_frames) >= self.geometry.flush_every(self.config.flush_every) or self._sum_is_due():
            flushed = self.flush()
            if flushed is not None:
                out.append(flushed)
        return out

    def _sum_is_due(self) -> bool:
        """Whether the pending partial sum is old enough to go (:meth:`LiveSliceGeometry.flush_age`)."""
        if not self._partial_frames or self.geometry is None:
            return False
        age = self.geometry.flush_age(self.config.publish_interval, self.workers_sharing())
        return time.monotonic() - self._partial_started >= age

    def _backproject(self, index: int, values: npt.NDArray[np.float32], angle_deg: float, event: int) -> None:
        """Add one corrected projection to the partial sums (live slices and sweep,
        in the stack of its window block)."""
        geometry = self.geometry
        assert geometry is not None
        block = geometry.block_of(index) if geometry.window else 0
        slices = self._blocks.get(block)
        if slices is None:
            slices = self._blocks[block] = (
                self._spare_blocks.pop() if self._spare_blocks else geometry.new_accumulator()
            )
        geometry.accumulate(slices, values, angle_deg)
        if not self._partial_frames:
            self._partial_started = time.monotonic()
        self._partial_frames.append((index, event))
        self._recent_events.append(event)

    def flush_if_due(self) -> PartialSum | None:
        """On a tick: flush a partial sum that is old enough to matter for the live view.

        A partial sum weighs the same (live slices plus sweep: 48 MB at 1024^2) however
        few projections it holds, so ticks do not send a large one every few frames: it
        goes once it holds ``flush_every`` projections or is old enough
        (:meth:`LiveSliceGeometry.flush_age`, for the number of workers it sees sharing
        the stream), which bounds both the traffic to the reducer and the live view's delay.
        """
        return self.flush() if self._sum_is_due() else None

    def workers_sharing(self) -> float:
        """How many workers share the stream, as this one sees it: dranspose numbers the
        events in order and deals them out, so this worker's latest projections (across
        partial sums: with many workers a sum may hold one) lie about that many events
        apart (1 until it has had two)."""
        events = self._recent_events
        if len(events) < 2:
            return 1.0
        return max(1.0, (events[-1] - events[0]) / (len(events) - 1))

    def flush(self) -> PartialSum | None:
        """Hand out the partial sums accumulated since the last flush."""
        if not self._blocks or not self._partial_frames or self.geometry is None:
            return None
        indices = tuple(index for index, _ in self._partial_frames)
        events = tuple(event for _, event in self._partial_frames)
        blocks: dict[int, npt.NDArray[np.float32]] = {}
        sweep: npt.NDArray[np.float32] | None = None
        for block, slices in self._blocks.items():
            blocks[block], block_sweep = self.geometry.split(slices.take())
            # The sweep spans every window block: its parts are added up.
            sweep = block_sweep if sweep is None or block_sweep is None else sweep + block_sweep
        partial = PartialSum(self.worker_name, self.geometry.recon_id, indices, blocks, sweep, events)
        self._spare_blocks.extend(self._blocks.values())  # zeroed by take(): their memory is reused
        self._blocks = {}
        self._partial_frames = []
        return partial

    def reset(self) -> None:
        """A new scan: forget the detector, partial sums and (unless kept) references."""
        self._blocks = {}
        self._spare_blocks = []
        self._partial_frames = []
        self._recent_events.clear()
        self._shape_votes.clear()
        self._broadcast = BroadcastReferences(self.config)
        self._references_through = -1  # the next scan's positions: its own darks and flats
        if not self.config.keep_references:
            self._shared = None
            self._use(None)
