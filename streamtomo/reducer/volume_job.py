"""The end-of-scan volume: every sinogram row reconstructed, published slice batch by batch.

It runs after the stream is reduced (the final live slices are already out), with
the backend's own threads on every core, in batches of rows sized to a memory bound,
so readers see the volume grow (``/entry/status/volume_slices_done``) and the
reducer holds no second copy of the whole sinogram, except where a preprocessing
step needs neighbouring rows (Paganin, zinger removal): every row is prepared first,
a batch of projections at a time, then reconstructed batch by batch. ``state`` says
``finished`` only in the publish that carries the last slices.

A :class:`VolumeCancel` stops it between batches (the next scan starts, the
reducer stops): the slices done so far stay, ``volume_slices_done`` says how many,
and ``reason`` says why the rest is missing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.reconstruction.backends import coverage_warnings_logged, get_backend, reconstruct
from streamtomo.pipeline.reconstruction.backends.fourier import FourierBackend
from streamtomo.pipeline.reconstruction.filters import padded_size
from streamtomo.pipeline.reconstruction.preprocess import (
    PaganinRetrieval,
    prepare_projections,
    prepare_volume_sinograms,
)
from streamtomo.pipeline.streaming.live_scan import LiveScan
from streamtomo.pipeline.streaming.prefault import prefaulted_zeros

logger = logging.getLogger(__name__)

BATCH_BYTES = 256 << 20  # sinogram rows + their slices per batch, float32
PLAN_BATCHES_PER_PUBLISH = 2  # Fourier path: NUFFT batches (2 slices per core each) between publishes


class VolumeCancel:
    """A request, from another thread, to stop the volume after the batch under way."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


# Other backends: at most this many rows per call. A cancel (the next scan) is seen
# between calls, and the volume is published as it grows; libraries that thread over
# rows (tomopy's ncore) keep every core busy with this many.
MAX_BATCH_ROWS = 32
PREPARE_COPIES = 16  # a projection's float32 bytes -> what preparing it holds at once


def batch_rows(n_rows: int, angles: int, cols: int, size: int) -> int:
    """Rows per reconstruction call of the batch path, within ``BATCH_BYTES``.

    Per row: the rows as taken, prepared and filtered (three copies of ``cols``), the
    filter's padded transforms (``padded_size(cols)``: two to four times ``cols``; at
    their peak about 1.5 of them at once, measured with tracemalloc at 1025 and 2049
    columns, 1500 angles), plus the slices out. Counting the padded ones as ``cols``
    put a batch at 2-2.75x the bound."""
    per_row = 4 * (angles * (3 * cols + 3 * padded_size(cols) // 2) + size * size * 2)
    return int(min(n_rows, MAX_BATCH_ROWS, max(1, BATCH_BYTES // per_row)))


def projections_per_batch(rows: int, cols: int) -> int:
    """Projections per call of the per-projection steps (zingers, Paganin), within
    ``BATCH_BYTES``: Paganin pads each projection to twice its size both ways in
    float64 and transforms it, about 16 times the projection's float32 bytes."""
    return int(max(1, BATCH_BYTES // (PREPARE_COPIES * 4 * rows * cols)))


def rows_per_publish(pairs: int) -> int:
    """Fourier path: rows between publishes, whole NUFFT batches (two slices per pair)."""
    return 2 * pairs * PLAN_BATCHES_PER_PUBLISH


def reconstruct_volume(
    scan: LiveScan, lock: threading.RLock, publish: Callable[[], None], cancel: VolumeCancel | None = None
) -> float | None:
    """Fill ``scan.volume``; returns the seconds it took (None: no volume or cancelled)."""
    cancel = cancel if cancel is not None else VolumeCancel()
    with lock:
        config, sinogram, geometry = scan.config, scan.sinogram, scan.geometry
        if not config.volume or sinogram is None or geometry is None or scan.state != "reconstructing":
            return None
        filled = sinogram.filled_slots()
        angles = sinogram.angles()[filled]
        center, size = geometry.center, geometry.size
        n_rows, cols = len(geometry.sinogram_rows), sinogram.by_angle.shape[2]
        contiguous = bool(np.all(np.diff(geometry.sinogram_rows) == 1))
        if len(filled) < 2:
            scan.state = "finished"
            publish()
            return None
        shape = (n_rows, size, size)
        scan.volume = prefaulted_zeros(shape) if scan.pool is None else scan.pool.zeros("volume", shape)
        scan.volume_done = 0
        publish()
    whole = config.paganin_delta_beta > 0 or config.zinger_removal
    started = time.perf_counter()
    try:
        in_place = not (whole or config.ring_removal) and _reconstruct_in_place(
            scan, lock, publish, filled, angles, cancel
        )
        if in_place or cancel.is_set():
            return _finished(scan, lock, publish, n_rows, config.backend, started, cancel)
        step = batch_rows(n_rows, len(filled), cols, size)
        # Zinger removal and Paganin work on whole projections (neighbouring rows):
        # every row is prepared first, a batch of projections at a time, then
        # reconstructed batch by batch (progress, a cancel between batches of either).
        everything = _prepare_projections(scan, lock, filled, contiguous, cancel) if whole else None
        for first in range(0, n_rows, step):
            if cancel.is_set():
                break
            last = min(n_rows, first + step)
            if everything is not None:
                rows = everything[first:last]
            else:
                with lock:  # (rows, angles, cols) of these rows only
                    rows = np.ascontiguousarray(sinogram.by_angle[filled, first:last].transpose(1, 0, 2))
            batch = prepare_volume_sinograms(rows, rings=config.ring_removal)  # per sinogram: by rows
            with coverage_warnings_logged(logger, scan.coverage_logged):
                slices = reconstruct(batch, angles, center, config.filter, size, backend=config.backend)
            with lock:
                scan.volume[first:last] = slices
                scan.volume_done = last
                if last < n_rows:
                    publish()
    except (ImportError, ValueError) as error:
        logger.warning("no end-of-scan volume: %s", error)
        volume_failed(scan, lock, publish, error)
        return None
    return _finished(scan, lock, publish, n_rows, config.backend, started, cancel)


def volume_failed(scan: LiveScan, lock: threading.RLock, publish: Callable[[], None], error: BaseException) -> None:
    """The volume stopped on ``error``: the scan is still finished (its stream was
    reduced), the slices done so far stay and ``volume_slices_done`` says how many (it
    went back to 0 while the file kept them, and said nothing was computed), and
    ``reason`` says why the rest is missing."""
    with lock:
        done = scan.volume_done if scan.volume is not None else 0
        scan.add_reason(f"the end-of-scan volume stopped after {done} slices: {error}")
        scan.volume_done = done
        scan.state = "finished"
        publish()


def _prepare_projections(
    scan: LiveScan, lock: threading.RLock, filled: npt.NDArray[np.intp], contiguous: bool, cancel: VolumeCancel
) -> npt.NDArray[np.float32]:
    """Every filled projection zinger-cleaned and phase-retrieved as configured, as
    (rows, angles, cols): one copy of the rows, plus one batch's temporaries (the whole
    stack at once took about 16 copies for Paganin). Stops early on a cancel."""
    config, sinogram = scan.config, scan.sinogram
    assert sinogram is not None
    _, rows, cols = sinogram.by_angle.shape
    prepared = np.empty((rows, len(filled), cols), dtype=np.float32)
    retrieval = (
        PaganinRetrieval(config.paganin_delta_beta, config.energy_kev, config.distance_m, config.pixel_size_m)
        if config.paganin_delta_beta > 0
        else None
    )
    step = projections_per_batch(rows, cols)
    for first in range(0, len(filled), step):
        if cancel.is_set():
            break
        with lock:  # (angles, rows, cols) of these projections only
            block = np.array(sinogram.by_angle[filled[first : first + step]])
        done = prepare_projections(
            block, zingers=config.zinger_removal, retrieval=retrieval, contiguous_rows=contiguous
        )
        prepared[:, first : first + len(done)] = done.transpose(1, 0, 2)
    return prepared


def _finished(
    scan: LiveScan,
    lock: threading.RLock,
    publish: Callable[[], None],
    n_rows: int,
    backend: str,
    started: float,
    cancel: VolumeCancel,
) -> float | None:
    seconds = time.perf_counter() - started
    with lock:
        done = scan.volume_done
        cancelled = cancel.is_set() and done < n_rows
        if cancelled:
            scan.add_reason(f"the end-of-scan volume was cancelled after {done} of {n_rows} slices: {cancel.reason}")
        scan.state = "finished"
        publish()  # the last slices and 'finished' in one generation
    if cancelled:
        logger.warning("scan finished without its whole volume: %s (%.2f s)", scan.reason, seconds)
        return None
    logger.info("volume of %d slices (%s backend) in %.2f s", n_rows, backend, seconds)
    return seconds


def _reconstruct_in_place(
    scan: LiveScan,
    lock: threading.RLock,
    publish: Callable[[], None],
    filled: npt.NDArray[np.intp],
    angles: npt.NDArray[np.float64],
    cancel: VolumeCancel,
) -> bool:
    """The fast path: the Fourier engine reads the angle-major sinogram where it lies and
    writes each batch straight into the published volume, on every core; no (rows,
    angles, cols) copy of a batch and no copy of its slices. False: not this backend,
    or cancelled before the last rows.

    Rows past ``volume_done`` are not yet valid for readers, so writing them outside the
    lock is safe; the lock is taken only to advance ``volume_done`` and publish.
    """
    backend = get_backend(scan.config.backend)
    if not isinstance(backend, FourierBackend):
        return False
    sinogram, geometry, volume = scan.sinogram, scan.geometry, scan.volume
    assert sinogram is not None and geometry is not None and volume is not None
    n_rows, cols = volume.shape[0], sinogram.by_angle.shape[2]
    with coverage_warnings_logged(logger, scan.coverage_logged):
        plan = backend.volume_plan(angles, cols, geometry.center, scan.config.filter, geometry.size, n_rows)
    slots = None if filled.size == sinogram.by_angle.shape[0] else filled
    step = rows_per_publish(plan.pairs)
    for first in range(0, n_rows, step):
        if cancel.is_set():
            return False
        last = min(n_rows, first + step)
        backend.reconstruct_rows(plan, sinogram.by_angle, range(first, last), volume[first:last], slots)
        with lock:
            scan.volume_done = last
            if last < n_rows:
                publish()
    return True
