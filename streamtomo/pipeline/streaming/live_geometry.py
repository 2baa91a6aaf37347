"""What the live products are made of, shared by workers and the reducer.

Workers backproject every projection into partial sums; the reducer only adds them.
Both must agree exactly on the geometry (rows, centre, filter, slice size, sweep
centres, window blocks), so it is derived here, once, from the configuration and
the detector shape, and identified by ``recon_id``: a partial sum made with another
``recon_id`` is never added.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math

import numpy as np
import numpy.typing as npt
import scipy.fft

from streamtomo.pipeline.config import ConfigError, PipelineConfig
from streamtomo.pipeline.correction.references import ReferenceSet
from streamtomo.pipeline.messages import DetectorInfo
from streamtomo.pipeline.reconstruction.backprojection import backproject_into
from streamtomo.pipeline.reconstruction.cor import SweepRows
from streamtomo.pipeline.reconstruction.filters import ProjectionFilter
from streamtomo.pipeline.reconstruction.interleaved import InterleavedSlices
from streamtomo.pipeline.streaming.admission import index_ranges, ranges_text
from streamtomo.pipeline.streaming.prefault import prefaulted_zeros

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
WINDOW_DEG = 180.0
AUTO_WINDOW_BLOCKS = 8  # window_block 0: the half turn in this many blocks
AUTO_FLUSH_BYTES = 1 << 20  # flush_every 0: about this much partial sum per projection
# flush_every 0: and at most this many times the bytes of the rows a projection sends
SUM_TO_ROWS = 2
MIN_AUTO_FLUSH, MAX_AUTO_FLUSH = 8, 64
AUTO_FLUSH_AGE_BYTES = 12 << 20  # a tick sends a sum of this size after one publish interval
# What all workers' partial sums may bring the reducer per second when they go by age:
# it adds each one (about 5 GB/s of sums on one core: a tenth of it).
SUM_INTAKE_BYTES_S = 512 << 20
# How much of the live slices and sweep the reducer may rewrite per second for new sums
# (``sum * weight`` into the published arrays, which the HSDS mirror then sends).
REWRITE_BYTES_S = 64 << 20


def recon_id(config: PipelineConfig, detector: DetectorInfo) -> str:
    """Identifies the live-reconstruction settings a partial sum was made with."""
    rows = config.live_slice_rows(detector.rows)
    size = config.slice_size or detector.cols
    sweep = f"{config.cor_sweep_steps}x{config.cor_sweep_step:g}"
    window = f"{config.live_mode}/{config.window_block}"
    return (
        f"c={config.center_value(detector.cols):.4f};f={config.filter};n={size};rows={rows};"
        f"sweep={sweep};window={window};det={detector.rows}x{detector.cols}"
    )


# Live settings that fall back to their default, alone or together, when they do not fit
# the detector (known only at the first frame): the centre, the slices' rows and size.
FALLBACKS: tuple[tuple[str, object], ...] = (("center", ""), ("slice_rows", ""), ("slice_size", 0))


def geometry_for(config: PipelineConfig, detector: DetectorInfo) -> LiveSliceGeometry:
    """The live geometry of the settings :func:`fit_to_detector` keeps (the reducer
    says what fell back, once: the notice settings_do_not_fit)."""
    fitted, misfit = fit_to_detector(config, detector)
    if misfit:
        logger.debug("%s", misfit)
    return LiveSliceGeometry(fitted, detector)


def fit_to_detector(config: PipelineConfig, detector: DetectorInfo) -> tuple[PipelineConfig, str]:
    """``config`` with the live settings that do not fit ``detector`` at their default,
    and what did not fit ('' when all did).

    Settings can only be checked against the detector once the first frame is here
    (set before it, through a parameter file or the control API): a centre or slice
    rows outside it, or more live slices than allowed, then fall back to the detector
    middle, default slice rows or slice size (said by the caller), instead of stopping the
    scan. Only the settings at fault fall back: a wrong slice_rows took a good centre
    with it. Settings that do not fit even so (sinogram rows outside the binned
    detector) raise :class:`ConfigError`: the scan is refused with it.
    """
    error = _misfit(config, detector)
    if error is None:
        return config, ""
    for count in range(1, len(FALLBACKS) + 1):
        for chosen in itertools.combinations(FALLBACKS, count):
            changes = {name: default for name, default in chosen if getattr(config, name) != default}
            if len(changes) != count:
                continue  # a setting already at its default is not what did not fit
            fitted = dataclasses.replace(config, **changes)  # type: ignore[arg-type]
            if _misfit(fitted, detector) is None:
                taken = ", ".join(f"{name} {value!r}" for name, value in changes.items())
                return fitted, f"{error}: {taken} taken instead"
    raise ConfigError(
        f"the settings do not fit a {detector.rows} x {detector.cols} detector"
        f"{f' (after bin {config.bin})' if config.bin > 1 else ''}: {error}"
    )


def _misfit(config: PipelineConfig, detector: DetectorInfo) -> str | None:
    try:
        config.check_live_bounds(detector.rows, detector.cols)
        LiveSliceGeometry(config, detector)
    except ConfigError as error:
        return str(error)
    return None


def window_frames(config: PipelineConfig) -> int:
    """Projections in half a turn (the window of ``live_mode='window'``)."""
    return max(1, round(WINDOW_DEG / config.slot_step))


def window_block(config: PipelineConfig) -> int:
    """Frames per window block: consecutive frame indices share a block."""
    if config.window_block:
        return config.window_block
    return max(1, math.ceil(window_frames(config) / AUTO_WINDOW_BLOCKS))


class LiveSliceGeometry:
    """Which rows become live slices and how; the sweep's row and centres."""

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
        self.cols = detector.cols
        self._detector, self._bin = detector, config.bin
        self.filter = ProjectionFilter(detector.cols, config.filter)
        self.filter_name = config.filter
        self.recon_id = recon_id(config, detector)
        # The centre-of-rotation sweep reconstructs the middle live slice's row.
        self.sweep_position = int(self.slice_positions[len(self.slice_positions) // 2])
        steps = config.cor_sweep_steps
        centers = self.center + config.cor_sweep_step * (np.arange(steps) - (steps - 1) / 2.0)
        self.sweep_centers = np.clip(centers, 0.0, detector.cols - 1.0)
        # Seen from the live centre, the sweep's candidates share the live slices' pixel
        # geometry: a worker backprojects both in one pass.
        self.sweep_rows = (
            SweepRows(detector.cols, self.sweep_centers, config.filter, reference=self.center) if steps else None
        )
        # The rows :meth:`filtered_rows` transforms: the slice rows, then the sweep row.
        self._transformed_positions = (
            np.append(self.slice_positions, self.sweep_position)
            if self.sweep_rows is not None
            else self.slice_positions
        )
        self.window = config.live_mode == "window"
        self.window_frames = window_frames(config)
        self.window_block = window_block(config)

    @property
    def partial_bytes(self) -> int:
        """What one partial sum weighs: the live slices and the sweep candidates."""
        return (len(self.slice_rows) + len(self.sweep_centers)) * self.size * self.size * 4

    @property
    def row_bytes(self) -> int:
        """What one projection's sinogram rows weigh (float32), as a worker sends them."""
        return len(self.sinogram_rows) * self.cols * 4

    @functools.cached_property
    def footprint(self) -> str:
        """Where a reference set made for these rows lies on the detector: the (binned)
        detector, its pixel type, the binning and the detector rows, as ranges. Made when
        first asked (0.3 ms for 2048 rows): fit_to_detector builds geometries to try."""
        d = self._detector
        rows = ranges_text(index_ranges(int(r) for r in self.sinogram_rows), shown=len(self.sinogram_rows))
        return f"detector {d.rows}x{d.cols} {d.dtype}, bin {self._bin}, rows {rows}"

    def unfit(self, refs: ReferenceSet) -> str:
        """Why ``refs`` cannot correct these rows ("" where it can): another shape, or,
        where it says (``footprint``), another place on the detector. An earlier scan's
        set kept with keep_references, of other rows of the same count, had its darks
        correct every projection (0.72 off, said nowhere)."""
        shape = (len(self.sinogram_rows), self.cols)
        if refs.dark.shape != shape:
            return f"have shape {refs.dark.shape}, these sinogram rows {shape}"
        if refs.footprint and refs.footprint != self.footprint:
            return f"lie at {refs.footprint}, these rows at {self.footprint}"
        return ""

    def flush_every(self, configured: int) -> int:
        """Projections per partial sum: as configured, or from its size (0): about 1 MB
        of partial sums per projection, and at most :data:`SUM_TO_ROWS` times the rows
        the projections send, 8 to 64 projections (a 1024^2 sum of 48 MB every 48).

        The second bound is for narrow detectors: 32 rows of 256 columns sent 3.1 MB of
        sums (12 slices of 256^2) every 8 projections, twelve times the rows' 32 kB,
        all to be sent, received and added. The live view does not need them sooner: a
        tick sends a sum once it is a publish interval old (:meth:`flush_age`)."""
        if configured:
            return configured
        by_size = -(-self.partial_bytes // AUTO_FLUSH_BYTES)
        by_rows = -(-self.partial_bytes // (SUM_TO_ROWS * max(self.row_bytes, 1)))
        return int(min(MAX_AUTO_FLUSH, max(MIN_AUTO_FLUSH, by_size, by_rows)))

    def flush_age(self, publish_interval: float, workers: float = 1.0) -> float:
        """Seconds after which a tick sends a pending partial sum: one publish interval
        for small sums, up to 8 for large ones; and, with ``workers`` workers each
        sending one, long enough that together they bring the reducer at most
        :data:`SUM_INTAKE_BYTES_S`.

        Each worker's sum weighs the same however few projections it holds, so without
        the second bound the reducer's intake grew with the worker count, not the frame
        rate. dranspose hands each tick to one worker (a Redis clock), so a worker sees
        one about every ``workers`` publish intervals: 14 workers at 2048^2 (201 MB sums)
        sent the reducer about 0.8 GB/s to add at any frame rate. With the bound each
        sends at its first tick after 5.25 s (about 0.4 GB/s in all); at 1024^2 (50 MB
        sums) the bound, 1.3 s, is below the ticks' spacing and changes nothing.
        ``flush_every`` projections and the detector's end of series still send a sum
        earlier.
        """
        own = publish_interval * min(8.0, max(1.0, self.partial_bytes / AUTO_FLUSH_AGE_BYTES))
        return max(own, max(1.0, workers) * self.partial_bytes / SUM_INTAKE_BYTES_S)

    def rewrite_interval(self, publish_interval: float) -> float:
        """Seconds between two rewrites of the published live slices and sweep for new
        partial sums: one publish interval, or longer for large products, so that the
        reducer rewrites at most :data:`REWRITE_BYTES_S` (1024^2: 0.75 s; 2048^2: 3.0 s)."""
        return max(publish_interval, self.partial_bytes / REWRITE_BYTES_S)

    # The reducer's sums of a scan are mapped in the background from their creation
    # (prefaulted_zeros): the first partial sum added into fresh np.zeros pages took
    # 350-380 ms of system CPU at 2048^2 (201 MB of slices and sweep) on the frame path,
    # against 35 ms for every later one.
    def new_stack(self) -> FloatArray:
        return prefaulted_zeros((len(self.slice_rows), self.size, self.size))

    def new_sweep_stack(self) -> FloatArray:
        return prefaulted_zeros((len(self.sweep_centers), self.size, self.size))

    def block_of(self, frame_index: int) -> int:
        return frame_index // self.window_block

    def add(self, stack: FloatArray, slice_values: FloatArray, angle_deg: float, weight: float = 1.0) -> None:
        """Filter the slice rows (corrected) of one projection and backproject them."""
        backproject_into(stack, self.filter.apply(slice_values), angle_deg, self.center, weight)

    def add_sweep(self, stack: FloatArray, sweep_values: FloatArray, angle_deg: float) -> None:
        """Backproject the sweep row (corrected) of one projection into every candidate."""
        assert self.sweep_rows is not None
        backproject_into(stack, self.sweep_rows.filtered_rows(sweep_values), angle_deg, self.center)

    def new_accumulator(self) -> InterleavedSlices:
        """What a worker sums projection after projection: the live slices, then the
        sweep's candidates, in one stack (one pass over the pixels per projection)."""
        return InterleavedSlices(len(self.slice_rows) + len(self.sweep_centers), self.size)

    def accumulate(self, stack: InterleavedSlices, values: FloatArray, angle_deg: float) -> None:
        """:meth:`add` and :meth:`add_sweep` of one projection's corrected sinogram rows
        into a worker's accumulator: the same sums, bit for bit."""
        stack.add(self.filtered_rows(values), angle_deg, self.center)

    def filtered_rows(self, values: FloatArray) -> FloatArray:
        """The (K + M, C) rows a worker backprojects for one projection: its K slice rows
        filtered, then its sweep row filtered as each of the M candidates sees it.

        The same values, bit for bit, as ``filter.apply`` of the slice rows and
        ``sweep_rows.filtered_rows`` of the sweep row (the same transforms of the same
        rows, the same products), but in one transform each way instead of two: on a
        32 x 256 detector the two pairs of transform calls were a fifth of a worker's
        time per frame, most of it the calls' own overhead."""
        slice_count = len(self.slice_positions)
        spectra = scipy.fft.rfft(values[self._transformed_positions], n=self.filter.size, axis=-1)
        if self.sweep_rows is None:
            spectra *= self.filter.response
            products = spectra
        else:
            products = np.empty((slice_count + len(self.sweep_centers), spectra.shape[-1]), dtype=spectra.dtype)
            np.multiply(spectra[:slice_count], self.filter.response, out=products[:slice_count])
            np.multiply(self.sweep_rows.spectra, spectra[slice_count], out=products[slice_count:])
        filtered = scipy.fft.irfft(products, n=self.filter.size, axis=-1)[:, : self.cols]
        return np.ascontiguousarray(filtered, dtype=np.float32)

    def split(self, summed: FloatArray) -> tuple[FloatArray, FloatArray | None]:
        """An accumulator's (slices + candidates, N, N) sum as the live slices and the sweep."""
        k = len(self.slice_rows)
        return summed[:k], (summed[k:] if self.sweep_rows is not None else None)
