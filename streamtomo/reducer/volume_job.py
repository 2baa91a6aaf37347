"""The end-of-scan volume: every sinogram row reconstructed, published slice batch by batch.

It runs after the stream is reduced (the final live slices are already out), with
the backend's own threads on every core, in batches of rows sized to a memory bound,
so readers see the volume grow (``/entry/status/volume_slices_done``) and the
reducer never holds a second copy of the whole sinogram. ``state`` says
``finished`` only in the publish that carries the last slices.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from streamtomo.pipeline.reconstruction.backends import coverage_warnings_logged, reconstruct
from streamtomo.pipeline.reconstruction.preprocess import prepare_volume_sinograms
from streamtomo.pipeline.streaming.live_scan import LiveScan
from streamtomo.pipeline.streaming.prefault import prefaulted_zeros

logger = logging.getLogger(__name__)

BATCH_BYTES = 256 << 20  # sinogram rows + their slices per batch, float32


def batch_rows(n_rows: int, angles: int, cols: int, size: int, whole: bool) -> int:
    """Rows per batch: all of them when a filter needs neighbouring rows."""
    if whole:
        return n_rows
    per_row = 4 * (angles * cols * 3 + size * size * 2)  # input, filtered/padded copies, output
    return int(min(n_rows, max(1, BATCH_BYTES // per_row)))


def reconstruct_volume(scan: LiveScan, lock: threading.RLock, publish: Callable[[], None]) -> float | None:
    """Fill ``scan.volume``; returns the seconds it took (None: no volume)."""
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
    step = batch_rows(n_rows, len(filled), cols, size, whole)
    started = time.perf_counter()
    try:
        for first in range(0, n_rows, step):
            last = min(n_rows, first + step)
            with lock:  # (rows, angles, cols) of these rows only
                batch = np.ascontiguousarray(sinogram.by_angle[filled, first:last].transpose(1, 0, 2))
            batch = prepare_volume_sinograms(
                batch,
                zingers=config.zinger_removal,
                rings=config.ring_removal,
                paganin_delta_beta=config.paganin_delta_beta,
                energy_kev=config.energy_kev,
                distance_m=config.distance_m,
                pixel_size_m=config.pixel_size_m,
                contiguous_rows=contiguous,
            )
            with coverage_warnings_logged(logger, scan.coverage_logged):
                slices = reconstruct(batch, angles, center, config.filter, size, backend=config.backend)
            with lock:
                scan.volume[first:last] = slices
                scan.volume_done = last
                if last < n_rows:
                    publish()
    except (ImportError, ValueError) as error:
        logger.warning("no end-of-scan volume: %s", error)
        with lock:
            scan.volume, scan.volume_done = None, 0
            scan.state = "finished"
            publish()
        return None
    seconds = time.perf_counter() - started
    with lock:
        scan.state = "finished"
        publish()  # the last slices and 'finished' in one generation
    logger.info("volume of %d slices (%s backend) in %.2f s", n_rows, config.backend, seconds)
    return seconds
