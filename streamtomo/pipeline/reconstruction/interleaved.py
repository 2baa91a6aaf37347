"""A stack of live slices kept pixel-major, so one projection is backprojected at
vector speed: where the workers spend their time.

:func:`~streamtomo.pipeline.reconstruction.backprojection.backproject_into` adds to
a (K, N, N) stack: for every pixel it finds the pixel's detector interval and then
reads and writes one float in each of K slices N^2 floats apart, one at a time.
Here the K slices of a pixel sit side by side, padded to lanes of 4: ``(N, N, L)``,
and each detector interval's K values and K slopes too. Per pixel the interval is
found once and all slices are updated by a few vector instructions: 3.3x less CPU
than the planar kernel for 5 slices of 1024^2 and 5.3x for 12 (one core of the
2-core development machine, ``NUMBA_NUM_THREADS=1 benchmarks/bench_backprojection.py
--slices 5 12``: 2.3-2.6 and 3.5-3.6 ms per projection, against 7.7-7.8 and 19).
The kernel is compiled for the stack's number of lanes (:func:`pixel_major_kernel`).

Projections are added :data:`BATCH_PROJECTIONS` at a time: :meth:`InterleavedSlices.add`
keeps a projection's interval table and geometry and runs the kernel once the batch
is full, and anything that reads the sum (:meth:`~InterleavedSlices.slices`,
:meth:`~InterleavedSlices.take`) adds what is pending first. The kernel adds a whole
batch to one row of pixels while that row is in the core's cache, so the stack
(48 MiB for 12 slices of 1024^2, 192 MiB at 2048^2) crosses the memory bus once per
batch rather than once per projection: the bus the workers of one node share.

Each slice gets exactly the planar kernel's sum: the same float32 operations in the
same order, bit for bit (tested). What the rest of the pipeline sees is unchanged:
:meth:`InterleavedSlices.take` hands the sum out as (K, N, N) slices and starts a
new one; workers take it once per partial sum (every 8 to 64 projections, fewer
when a sum goes by age: a sum of fewer than four projections gains nothing from
batches, and loses nothing).

The kernel is :func:`~streamtomo.pipeline.reconstruction.backprojection.pixel_major_kernel`,
beside the planar one whose detector geometry it shares.

With fewer than :data:`MIN_INTERLEAVED_SLICES` slices, or without numba, the stack
is kept planar and the planar kernels do the work: one or two slices gain nothing
from lanes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.numba_runtime import compile_kernel, parallel_pays
from streamtomo.pipeline.reconstruction.backprojection import (
    Backend,
    backproject_into,
    pixel_major_kernel,
    projection_rows,
    resolve_backend,
)

FloatArray = npt.NDArray[np.float32]
# Floats per pixel come in whole lanes of 4: the kernel adds groups of 8 (one AVX2
# register) and a last group of 4, so 12 slices take 12 floats, not 16 (a quarter
# less memory and traffic for a worker's 5 live slices and 7 sweep candidates).
LANES = 4
MIN_INTERLEAVED_SLICES = 3
# Projections per kernel call. 4 of 12 slices of 1024^2 on one core: 7.5 -> 6.7 ms
# per projection, 2048^2: 29.4 -> 27.6 (two such processes at once: 30.3 -> 27.0;
# a prototype of the kernel, best of 3 passes of 32 angles).
BATCH_PROJECTIONS = 4
_Unweave = Callable[[FloatArray, FloatArray, bool], None]


def lanes_for(n_slices: int) -> int:
    """Floats per pixel: the slices, rounded up to whole lanes of :data:`LANES`."""
    return -(-n_slices // LANES) * LANES


def interval_table(rows: FloatArray, lanes: int, out: FloatArray | None = None) -> FloatArray:
    """(n_cols, 2 * lanes): per detector interval c, the K values ``rows[:, c]`` then
    the K slopes ``rows[:, c + 1] - rows[:, c]`` (zero for the last column and the
    padding lanes), as the planar kernel computes them; in ``out`` where given."""
    n_slices, n_cols = rows.shape
    if out is None:
        table = np.zeros((n_cols, 2 * lanes), dtype=np.float32)
    else:
        table = out
        table.fill(0.0)
    table[:, :n_slices] = rows.T
    np.subtract(rows[:, 1:].T, rows[:, :-1].T, out=table[:-1, lanes : lanes + n_slices])
    return table


@functools.cache
def _numba_unweave(parallel: bool) -> _Unweave:
    return compile_kernel(_define_unweave, parallel)


def _define_unweave(numba: Any) -> _Unweave:
    # Row by row: one row of the stack (N pixels x lanes, in cache) is read once per
    # slice and written to that slice's row in order (writing all K slices pixel by
    # pixel, 4 MB apart, thrashed the same cache sets); emptied in the same pass when
    # asked (a worker's partial sum starts again from zero).
    def unweave(data: FloatArray, out: FloatArray, empty: bool) -> None:
        n_slices, n, _ = out.shape
        for i in numba.prange(n):
            for k in range(n_slices):
                for j in range(n):
                    out[k, i, j] = data[i, j, k]
            if empty:
                data[i, :, :] = 0.0

    return unweave  # type: ignore[no-any-return,unused-ignore]


class InterleavedSlices:
    """K slices of N x N that projections are added to; handed out as (K, N, N).

    Not thread-safe: the batch not yet added is state shared by :meth:`add` and the
    reads (a worker adds and takes in one thread)."""

    def __init__(self, n_slices: int, size: int, backend: Backend = "auto") -> None:
        if n_slices < 1 or size < 1:
            raise ValueError(f"need at least one slice of at least one pixel, got {n_slices} x {size}^2")
        self.n_slices, self.size = int(n_slices), int(size)
        self.backend: Backend = backend
        self.interleaved = resolve_backend(backend) == "numba" and n_slices >= MIN_INTERLEAVED_SLICES
        self.lanes = lanes_for(n_slices) if self.interleaved else n_slices
        shape = (size, size, self.lanes) if self.interleaved else (n_slices, size, size)
        self._data = np.zeros(shape, dtype=np.float32)
        # Threads pay off from about 512^2 pixels, whatever the lanes: below, waking
        # them costs more than they save (256^2: 0.29 ms on one thread, 0.36 on two).
        self.threaded = parallel_pays(size * size)
        # The batch not yet added: interval tables (made for the first projection's
        # detector width) and, per projection, centre, cos, sin and weight.
        self._tables: FloatArray | None = None
        self._geometry = np.zeros((4, BATCH_PROJECTIONS), dtype=np.float64)
        self._pending = 0

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes)

    @property
    def pending(self) -> int:
        """Projections added but not yet in the stack (they are, once the sum is read)."""
        return self._pending

    def add(self, filtered_rows: FloatArray, angle_deg: float, center: float, weight: float = 1.0) -> None:
        """Add ``weight`` x the backprojection of one projection's K filtered rows
        (K, n_cols), as :func:`backproject_into` would to the (K, N, N) slices. The
        projection may wait for its batch: :meth:`slices` and :meth:`take` see it."""
        if not self.interleaved:
            backproject_into(self._data, filtered_rows, angle_deg, center, weight, backend=self.backend)
            return
        rows = projection_rows(self.n_slices, filtered_rows)
        n_cols = rows.shape[1]
        if self._tables is None or self._tables.shape[1] != n_cols:
            self._add_pending()
            self._tables = np.empty((BATCH_PROJECTIONS, n_cols, 2 * self.lanes), dtype=np.float32)
        elif self._pending == BATCH_PROJECTIONS:  # a full batch whose kernel raised: it again, not an IndexError
            self._add_pending()
        theta = math.radians(angle_deg)
        interval_table(rows, self.lanes, out=self._tables[self._pending])
        # math.cos/sin, as the planar kernel's caller computes them: the same pixels
        # lie on the detector.
        self._geometry[:, self._pending] = (float(center), math.cos(theta), math.sin(theta), float(weight))
        self._pending += 1
        if self._pending == BATCH_PROJECTIONS:
            self._add_pending()

    def _add_pending(self) -> None:
        if not self._pending:
            return
        assert self._tables is not None
        count = self._pending
        centers, cos_b, sin_b, weights = (np.ascontiguousarray(g[:count]) for g in self._geometry)
        pixel_major_kernel(self.threaded, self.lanes)(self._data, self._tables[:count], centers, cos_b, sin_b, weights)
        self._pending = 0  # only once they are in: a kernel that raised leaves them pending

    def slices(self) -> FloatArray:
        """A (K, N, N) copy of the sum so far."""
        if not self.interleaved:
            return self._data.copy()
        return self._unweave(empty=False)

    def take(self) -> FloatArray:
        """The (K, N, N) sum so far; the stack starts again from zero (its memory kept)."""
        if not self.interleaved:
            taken, self._data = self._data, np.zeros_like(self._data)
            return taken
        return self._unweave(empty=True)

    def _unweave(self, empty: bool) -> FloatArray:
        self._add_pending()
        out = np.empty((self.n_slices, self.size, self.size), dtype=np.float32)
        _numba_unweave(self.threaded)(self._data, out, empty)
        return out

    def clear(self) -> None:
        """Back to zero: the sum and the projections not yet added."""
        self._pending = 0
        self._data.fill(0.0)
