"""The worker's per-frame work, free of dranspose: check, correct, extract, backproject.

One :class:`FrameProcessor` per worker. It keeps the references it was given (a
dranspose binary parameter set by the reducer), the live reconstruction settings,
and an unweighted partial backprojection sum that it hands out on :meth:`flush`.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.config import ConfigError, PipelineConfig
from streamtomo.pipeline.correction.corrector import Corrector
from streamtomo.pipeline.correction.references import ReferenceSet
from streamtomo.pipeline.messages import (
    DetectorInfo,
    PartialSum,
    ProjectionRows,
    ReferenceRows,
    Rejected,
)
from streamtomo.pipeline.reconstruction.backprojection import backproject_into
from streamtomo.pipeline.reconstruction.filters import ProjectionFilter
from streamtomo.pipeline.scan import ImageKey

logger = logging.getLogger(__name__)

# A few NaN/inf pixels are repaired (set to 0 after -log); more means a broken frame.
MAX_NONFINITE_FRACTION = 0.01

Message = ReferenceRows | ProjectionRows | PartialSum | Rejected


def recon_id(config: PipelineConfig, detector: DetectorInfo) -> str:
    """Identifies the live-reconstruction settings a partial sum was made with."""
    rows = config.live_slice_rows(detector.rows)
    size = config.slice_size or detector.cols
    return f"c={config.center_value(detector.cols):.4f};f={config.filter};n={size};rows={rows}"


def geometry_for(config: PipelineConfig, detector: DetectorInfo) -> LiveSliceGeometry:
    """The live geometry, or the default one if the settings do not fit the detector.

    Settings can only be checked against the detector once the first frame is here;
    a centre or row outside it then falls back to the detector middle and default
    slice rows, with a warning, instead of stopping the scan.
    """
    try:
        return LiveSliceGeometry(config, detector)
    except ConfigError as error:
        logger.warning("%s: using the detector middle and default slice rows", error)
        return LiveSliceGeometry(dataclasses.replace(config, center="", slice_rows=""), detector)


class LiveSliceGeometry:
    """Which rows become live slices and how: shared by workers and the reducer."""

    def __init__(self, config: PipelineConfig, detector: DetectorInfo) -> None:
        self.sinogram_rows = np.asarray(config.sinogram_rows(detector.rows), dtype=np.intp)
        # All rows, in order: take the frame as it is (a view, no copy).
        self.all_rows = bool(len(self.sinogram_rows) == detector.rows and np.all(np.diff(self.sinogram_rows) == 1))
        slice_rows = config.live_slice_rows(detector.rows)
        position = {int(r): i for i, r in enumerate(self.sinogram_rows)}
        self.slice_rows = np.asarray(slice_rows, dtype=np.intp)
        # Positions of the slice rows within the sinogram rows.
        self.slice_positions = np.asarray([position[r] for r in slice_rows], dtype=np.intp)
        self.center = config.center_value(detector.cols)
        self.size = config.slice_size or detector.cols
        self.filter = ProjectionFilter(detector.cols, config.filter)
        self.recon_id = recon_id(config, detector)

    def new_stack(self) -> npt.NDArray[np.float32]:
        return np.zeros((len(self.slice_rows), self.size, self.size), dtype=np.float32)

    def add(self, stack: npt.NDArray[np.float32], slice_values: npt.NDArray[np.float32], angle_deg: float, weight: float = 1.0) -> None:
        """Filter the slice rows (corrected) of one projection and backproject them."""
        backproject_into(stack, self.filter.apply(slice_values), angle_deg, self.center, weight)


class FrameProcessor:
    def __init__(self, config: PipelineConfig, worker_name: str = "worker") -> None:
        self.config = config
        self.worker_name = worker_name
        self.detector: DetectorInfo | None = None
        self.geometry: LiveSliceGeometry | None = None
        self.references: ReferenceSet | None = None
        self._corrector: Corrector | None = None
        self._partial: npt.NDArray[np.float32] | None = None
        self._partial_frames: list[int] = []

    # -- settings -------------------------------------------------------------------
    def configure(self, config: PipelineConfig) -> PartialSum | None:
        """Apply new settings; returns the pending partial sum made with the old ones."""
        pending = self.flush() if config != self.config else None
        self.config = config
        self.geometry = None if self.detector is None else geometry_for(config, self.detector)
        return pending

    def set_references(self, references: ReferenceSet | None) -> None:
        if references is self.references:
            return
        self.references = references
        self._corrector = None

    def _corrector_for(self, geometry: LiveSliceGeometry) -> Corrector | None:
        if self.references is None:
            return None
        if self._corrector is None:
            refs = self.references
            if refs.dark.shape[0] != len(geometry.sinogram_rows):
                logger.warning("references have %d rows, sinogram %d: ignoring them", refs.dark.shape[0], len(geometry.sinogram_rows))
                return None
            self._corrector = Corrector(refs.dark, refs.flat, refs.version)
        return self._corrector

    # -- frames ---------------------------------------------------------------------
    def _check_frame(self, index: int, data: npt.NDArray[np.generic]) -> Rejected | None:
        if data.ndim != 2:
            return Rejected(index, "wrong_shape", f"frame {index} has shape {data.shape}, expected 2-D")
        if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
            return Rejected(index, "wrong_dtype", f"frame {index} has dtype {data.dtype}")
        if self.detector is None:
            self.detector = DetectorInfo(int(data.shape[0]), int(data.shape[1]), str(data.dtype))
            self.geometry = geometry_for(self.config, self.detector)
        elif data.shape != (self.detector.rows, self.detector.cols):
            return Rejected(index, "wrong_shape", f"frame {index} has shape {data.shape}, detector is {(self.detector.rows, self.detector.cols)}")
        return None

    def process(
        self, index: int, key: ImageKey, data: npt.NDArray[np.generic], angle_deg: float | None, angle_measured: bool = True
    ) -> list[Message]:
        """Handle one decoded frame; returns the messages for the reducer."""
        if key in (ImageKey.INVALID, ImageKey.ALIGNMENT):
            return [Rejected(index, "dropped_kind", f"frame {index} has image_key {int(key)} ({key.name.lower()})")]
        rejected = self._check_frame(index, data)
        if rejected is not None:
            return [rejected]
        assert self.geometry is not None and self.detector is not None
        rows = data if self.geometry.all_rows else data[self.geometry.sinogram_rows]
        if key in (ImageKey.DARK, ImageKey.FLAT):
            if np.issubdtype(rows.dtype, np.floating) and not np.isfinite(rows).all():
                return [Rejected(index, "non_finite", f"{key.name.lower()} frame {index} has NaN/inf pixels")]
            return [ReferenceRows(index, key, np.ascontiguousarray(rows), self.detector)]
        if np.issubdtype(rows.dtype, np.floating):
            bad = ~np.isfinite(rows)
            if bad.mean() > MAX_NONFINITE_FRACTION:
                return [Rejected(index, "non_finite", f"projection {index}: {bad.mean():.0%} of its pixels are NaN/inf")]
        if angle_deg is None or not np.isfinite(angle_deg):
            return [Rejected(index, "missing_angle", f"projection {index} has no valid angle")]
        corrector = self._corrector_for(self.geometry)
        if corrector is None:
            return [ProjectionRows(index, angle_deg, angle_measured, np.ascontiguousarray(rows), 0, "", self.detector)]
        values = corrector.correct_fast(rows)
        # Integer frames give finite values by construction (the table is clipped).
        if np.issubdtype(rows.dtype, np.floating) and not np.isfinite(values).all():
            np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        out: list[Message] = [
            ProjectionRows(index, angle_deg, angle_measured, values, corrector.version, self.geometry.recon_id, self.detector)
        ]
        if self._partial is None:
            self._partial = self.geometry.new_stack()
        self.geometry.add(self._partial, values[self.geometry.slice_positions], angle_deg)
        self._partial_frames.append(index)
        if len(self._partial_frames) >= self.config.flush_every:
            flushed = self.flush()
            if flushed is not None:
                out.append(flushed)
        return out

    def flush(self) -> PartialSum | None:
        """Hand out the partial sum accumulated since the last flush."""
        if self._partial is None or not self._partial_frames or self.geometry is None:
            return None
        partial = PartialSum(self.worker_name, self.geometry.recon_id, tuple(self._partial_frames), self._partial)
        self._partial = None
        self._partial_frames = []
        return partial

    def reset(self) -> None:
        """A new scan: forget the detector, partial sums and (unless kept) references."""
        self._partial = None
        self._partial_frames = []
        if not self.config.keep_references:
            self.set_references(None)
