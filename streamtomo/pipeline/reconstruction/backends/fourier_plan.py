"""One geometry's Fourier FBP, planned once and run on every core (the volume engine).

Why a plan object: everything that depends only on the geometry (the NUFFT points
and their sort, the per-angle phase and weight factors, the filter response, the
batch buffers) is computed once and reused for every batch of slices of a volume,
and for the next scan with the same geometry (:func:`plan_for` keeps the last one).

Why this work split: a volume is thousands of independent slices, so the cores are
kept busy by giving each a whole piece of work rather than by threading each numpy
call. Preparing the NUFFT strengths (filter, window, DFT, scale) runs as tasks of
``ANGLE_CHUNK`` angles of one slice pair on a thread pool (each task's temporaries
stay in the cache; ducc0 and numpy release the GIL); the NUFFT runs each pair's
transform on every thread; the slices are unpacked straight into the caller's
output by the same pool. No step walks a whole batch on one thread: those steps
were what kept 16 cores at a third of their speed.

Why ducc0 for the NUFFT: on the same points (N=2048, 3217 angles, 8.0 M points,
tolerance 1e-3, one thread) its type-1 transform took 0.35 s against FINUFFT
2.5.1's 0.55 s (spreading 0.26 s against 0.41 s): it picks its oversampling
(about 1.46 here) and kernel together for the least work at the tolerance.

The sum is :mod:`streamtomo.pipeline.reconstruction.backends.fourier`'s (see there):
slices 2p and 2p+1 of a batch are the real and imaginary parts of pair p.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft

from streamtomo.pipeline.reconstruction.fbp import angular_weights
from streamtomo.pipeline.reconstruction.filters import frequency_response, padded_size

FloatArray = npt.NDArray[np.float32]
logger = logging.getLogger(__name__)

DEFAULT_EPS = 1e-3  # NUFFT tolerance: far below the interpolation error of fbp itself
# The largest fine grid (times N per side) ducc0 may choose; it picks about 1.46 at the
# default tolerance, the bound is what the memory arithmetic counts on.
DEFAULT_UPSAMPLING = 1.6
SMALLEST_UPSAMPLING, LARGEST_UPSAMPLING = 1.2, 2.5  # ducc0's own limits
# Batch buffers (strengths, fine grids, complex images) a plan may hold. At N=2048 and
# 3217 angles a pair needs at most 184 MB, so 16 cores get their 16 pairs within it.
DEFAULT_MEMORY = 4 << 30
ANGLE_CHUNK = 64  # angles per preparation task: a few MB of temporaries, cache-sized
ROW_PAD = 16  # complex64 elements between one buffer row's end and the next row's start
INTERPOLATIONS: tuple[str, ...] = ("linear", "sinc")


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def window_length(n_cols: int, center: float, slice_size: int) -> int:
    """Samples L of the periodic detector window; no slice pixel may read a wrapped column.

    A pixel at distance r <= R from the slice centre reads d in [-R, R] around
    the axis at ``floor(center)``; the detector occupies d in [-s, C-1-s]. Its
    periodic copies start at C-1-s-L and -s+L, so L > R + max(s, C-s) + 1.
    """
    s = math.floor(center)
    half = slice_size // 2
    radius = math.hypot(half, max(half, slice_size - 1 - half))
    need = math.ceil(radius + max(s, n_cols - s) + 3)
    return int(scipy.fft.next_fast_len(need))


def polar_points(
    angles_deg: npt.NDArray[np.float64], length: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """NUFFT points (A*P,) for the DFT bins k of an L window, and k itself (P,).

    An even L has a Nyquist bin whose real interpolant is cos(pi d): it is split
    into halves at k = -L/2 and +L/2, so P = L + 1 points per angle then.
    """
    k = scipy.fft.fftfreq(length, 1.0 / length)  # 0, 1, ..., -1 (integers as floats)
    if length % 2 == 0:
        k = np.append(k, length / 2.0)
    theta = np.radians(angles_deg)
    step = 2.0 * np.pi * k / length
    x = (-np.sin(theta)[:, None] * step[None, :]).astype(np.float32).ravel()
    y = (np.cos(theta)[:, None] * step[None, :]).astype(np.float32).ravel()
    return x, y, k


@dataclass(frozen=True)
class Geometry:
    """What a plan depends on; equal geometries share a plan."""

    angles: bytes  # float64 degrees, as bytes: hashable and exact
    n_cols: int
    center: float
    size: int
    filter_name: str
    interpolation: str
    eps: float
    upsampling: float

    @classmethod
    def of(
        cls,
        angles_deg: npt.ArrayLike,
        n_cols: int,
        center: float,
        size: int,
        filter_name: str = "ramp",
        interpolation: str = "linear",
        eps: float = DEFAULT_EPS,
        upsampling: float = DEFAULT_UPSAMPLING,
    ) -> Geometry:
        """The geometry of already checked inputs (angles in degrees, any array-like)."""
        if not SMALLEST_UPSAMPLING < upsampling <= LARGEST_UPSAMPLING:
            raise ValueError(
                f"upsampling {upsampling} is outside ({SMALLEST_UPSAMPLING}, {LARGEST_UPSAMPLING}]: "
                "the largest fine grid per side, in slice sizes"
            )
        angles = np.ascontiguousarray(angles_deg, dtype=np.float64).ravel()
        return cls(
            angles.tobytes(),
            int(n_cols),
            float(center),
            int(size),
            filter_name,
            interpolation,
            float(eps),
            float(upsampling),
        )

    @property
    def angles_deg(self) -> npt.NDArray[np.float64]:
        return np.frombuffer(self.angles, dtype=np.float64)


def pair_bytes(n_angles: int, n_cols: int, size: int, upsampling: float) -> int:
    """Batch memory one slice pair needs: strengths, the NUFFT's fine grid, the complex image."""
    length = window_length(n_cols, n_cols / 2.0, size)
    fine = math.ceil(upsampling * size) ** 2
    return 8 * (n_angles * (length + 1) + fine + size * size)


def pairs_for(n_slices: int, geometry: Geometry, threads: int, memory: int = DEFAULT_MEMORY) -> int:
    """Pairs per batch: one per thread (every stage of a batch has work for every thread,
    and a volume has few batches), no more than the slices need, no more than
    ``memory`` allows (at least one)."""
    per_pair = pair_bytes(len(geometry.angles) // 8, geometry.n_cols, geometry.size, geometry.upsampling)
    return max(1, min(threads, (n_slices + 1) // 2, memory // max(per_pair, 1)))


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_threads = 0


def thread_pool(threads: int) -> ThreadPoolExecutor:
    """The process's preparation pool (reused: starting threads per batch costs more than it saves)."""
    global _pool, _pool_threads
    with _pool_lock:
        if _pool is None or _pool_threads != threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fourier")
            _pool_threads = threads
        return _pool


def run_all(pool: ThreadPoolExecutor | None, tasks: Sequence[Callable[[], None]]) -> None:
    """Run ``tasks`` on ``pool`` (inline without one, or for one task); re-raise the first failure."""
    if pool is None or len(tasks) <= 1:
        for task in tasks:
            task()
        return
    futures: list[Future[None]] = [pool.submit(task) for task in tasks]
    for future in futures:
        future.result()


class FourierPlan:
    """Fourier FBP of one geometry for batches of ``pairs`` slice pairs on ``threads`` threads."""

    def __init__(self, geometry: Geometry, pairs: int, threads: int) -> None:
        import ducc0  # optional: imported only when this backend runs

        best = float(
            ducc0.nufft.bestEpsilon(
                ndim=2, singleprec=True, sigma_min=SMALLEST_UPSAMPLING, sigma_max=geometry.upsampling
            )
        )
        if geometry.eps < best:  # ducc0 would fail at the first batch, after the preparation
            raise ValueError(
                f"eps {geometry.eps:g} is below {best:.2g}, the least error of a single-precision "
                f"NUFFT with upsampling up to {geometry.upsampling:g}: raise eps or upsampling"
            )
        pool = int(ducc0.misc.thread_pool_size())
        if pool < threads:
            logger.warning(
                "the volume's NUFFT runs on %d of the %d threads asked: ducc0 sized its pool from "
                "DUCC0_NUM_THREADS, OMP_NUM_THREADS or the CPU affinity when it was imported",
                pool,
                threads,
            )
        self.geometry = geometry
        self.pairs = int(pairs)
        self.threads = int(threads)
        angles = geometry.angles_deg
        self.n_angles = angles.size
        self.length = window_length(geometry.n_cols, geometry.center, geometry.size)
        x, y, k = polar_points(angles, self.length)
        self.points = k.size
        weights = angular_weights(angles)
        frac = geometry.center - math.floor(geometry.center)
        # w_a / L e^(2 pi i k frac / L): angular weight, DFT normalisation, sub-pixel axis.
        factors = weights[:, None] / self.length * np.exp(2j * np.pi * k[None, :] * frac / self.length)
        if geometry.interpolation == "linear":
            factors = factors * (np.sinc(k / self.length) ** 2)[None, :]
        if k.size > self.length:  # the two halves of the Nyquist bin
            factors[:, self.length // 2] *= 0.5
            factors[:, self.length] *= 0.5
        self.factors = factors.astype(np.complex64)
        # The filter on the full complex spectrum of the padded row (real and even, so a
        # pair packed as re + i*im is filtered as two real rows are).
        half = frequency_response(geometry.n_cols, geometry.filter_name)
        self.padded = padded_size(geometry.n_cols)
        bins = np.arange(self.padded)
        # Complex, with the inverse DFT's 1/P folded in: a complex64 array times a float32
        # one goes through NumPy's buffered casting loop, 7x slower than complex times
        # complex, and that loop was the step that kept the preparation from scaling.
        full = half[np.minimum(bins, self.padded - bins)].astype(np.float64) / self.padded
        self.response = full.astype(np.complex64)
        self._coords = np.stack([x, y], axis=1)  # (A*P, 2) float32, the points' own copy
        self._plan: Any = None  # the ducc0 plan, made at the first batch
        self._ducc0 = ducc0
        self.strengths = np.empty((self.pairs, self.n_angles, self.points), dtype=np.complex64)
        self.images = np.empty((self.pairs, geometry.size, geometry.size), dtype=np.complex64)
        self.lock = threading.Lock()  # one batch at a time: the buffers are the plan's
        self._local = threading.local()  # per-thread preparation buffers
        # Wall seconds per stage over the plan's life: where a volume's time went.
        self.seconds = {"prepare": 0.0, "nufft": 0.0, "unpack": 0.0}

    def _nufft(self) -> Any:
        """The ducc0 plan (the points sorted once), its transforms on every thread of the plan."""
        if self._plan is None:
            self._plan = self._ducc0.nufft.plan(
                nu2u=True,
                coord=self._coords,
                grid_shape=(self.geometry.size, self.geometry.size),
                epsilon=self.geometry.eps,
                nthreads=self.threads,
                sigma_min=SMALLEST_UPSAMPLING,
                sigma_max=self.geometry.upsampling,
                periodicity=2.0 * np.pi,
                fft_order=False,  # image rows and columns from -N/2, as the slices are laid out
            )
        return self._plan

    def memory_bytes(self) -> int:
        """What the plan holds: buffers, points, and ducc0's copy of the points with their
        sorted index (12 bytes a point, measured). A running transform also holds its
        fine grid, counted in ``pair_bytes``."""
        held = self.strengths.nbytes + self.images.nbytes + self._coords.nbytes
        return held + (12 * self._coords.shape[0] if self._plan is not None else 0)

    def reconstruct_into(
        self,
        by_angle: npt.NDArray[np.floating[Any]],
        rows: Sequence[int],
        out: FloatArray,
        slots: npt.NDArray[np.intp] | None = None,
    ) -> None:
        """Slices of ``by_angle[slots][:, rows]`` ((A, R, C), angle-major, any strides) into ``out`` (K, N, N).

        The sinogram is read where it lies: no (rows, angles, cols) copy of the batch.
        """
        rows = list(rows)
        if out.shape != (len(rows), self.geometry.size, self.geometry.size):
            raise ValueError(f"out has shape {out.shape}, need {(len(rows), self.geometry.size, self.geometry.size)}")
        pool = thread_pool(self.threads) if self.threads > 1 else None
        with self.lock:
            for first in range(0, len(rows), 2 * self.pairs):
                batch = rows[first : first + 2 * self.pairs]
                pairs = (len(batch) + 1) // 2
                started = time.perf_counter()
                self._prepare(pool, by_angle, slots, batch)
                images = self.images[:pairs]
                prepared = time.perf_counter()
                # The pairs one after the other, each on every thread: ducc0 spreads one
                # transform on many threads at 1.9-2.2x on this 2-core machine (N=1024
                # and 2048), and one plan's points and grid are held, not one per thread.
                # (A ducc0 plan is not safe for concurrent calls: its timers are shared.)
                self._nufft().nu2u(forward=False, points=self.strengths[:pairs].reshape(pairs, -1), out=images)
                transformed = time.perf_counter()
                run_all(pool, [self._unpacker(images, p, out, first, len(batch)) for p in range(pairs)])
                self.seconds["prepare"] += prepared - started
                self.seconds["nufft"] += transformed - prepared
                self.seconds["unpack"] += time.perf_counter() - transformed

    def _prepare(
        self,
        pool: ThreadPoolExecutor | None,
        by_angle: npt.NDArray[np.floating[Any]],
        slots: npt.NDArray[np.intp] | None,
        batch: list[int],
    ) -> None:
        tasks: list[Callable[[], None]] = []
        for p in range(0, len(batch), 2):
            pair = batch[p : p + 2]
            for a0 in range(0, self.n_angles, ANGLE_CHUNK):
                tasks.append(self._preparer(by_angle, slots, pair, p // 2, a0, min(self.n_angles, a0 + ANGLE_CHUNK)))
        run_all(pool, tasks)

    def _preparer(
        self,
        by_angle: npt.NDArray[np.floating[Any]],
        slots: npt.NDArray[np.intp] | None,
        pair: list[int],
        p: int,
        a0: int,
        a1: int,
    ) -> Callable[[], None]:
        def task() -> None:
            n_cols, length = self.geometry.n_cols, self.length
            s = math.floor(self.geometry.center)
            count = a1 - a0
            # This thread's buffers, reused by every task it runs: fresh multi-megabyte
            # temporaries per task meant mmap, page faults and munmap in 16 threads at
            # once, which the kernel serialises (the engine ran at a third of 16 cores).
            row, window, picked = self._buffers()
            row, window, picked = row[:count], window[:count], picked[:count]
            # The pair as one complex row: filtering is real, so re and im stay apart.
            for part, index in ((row.real, 0), (row.imag, 1)):
                if index >= len(pair):
                    part[:, :n_cols] = 0.0
                elif slots is None:
                    part[:, :n_cols] = by_angle[a0:a1, pair[index]]
                else:
                    np.take(by_angle[:, pair[index]], slots[a0:a1], axis=0, out=picked)
                    part[:, :n_cols] = picked
            row[:, n_cols:] = 0.0
            # ducc0's FFTs, in place: 1.2-1.5x scipy.fft's on these (64, 4096) and
            # (64, 2500) complex64 blocks (measured here), and the same library as the NUFFT.
            fft = self._ducc0.fft.c2c
            spectrum = fft(row, axes=(1,), forward=True, out=row, nthreads=1)
            spectrum *= self.response
            filtered = fft(spectrum, axes=(1,), forward=False, out=spectrum, nthreads=1)  # 1/P in the response
            # Column t sits at (t - s) mod L: columns s.. at the start, columns ..s-1 at
            # the end, zero between (fbp reads 0 off the detector).
            window[:, : n_cols - s] = filtered[:, s:n_cols]
            window[:, n_cols - s : length - s] = 0.0
            window[:, length - s :] = filtered[:, :s]
            dft = fft(window, axes=(1,), forward=True, out=window, nthreads=1)
            target = self.strengths[p, a0:a1]
            np.multiply(dft, self.factors[a0:a1, :length], out=target[:, :length])
            if self.points > length:  # even L: the Nyquist bin's second half at +L/2
                np.multiply(dft[:, length // 2], self.factors[a0:a1, length], out=target[:, length])

        return task

    def _buffers(self) -> tuple[npt.NDArray[np.complex64], npt.NDArray[np.complex64], FloatArray]:
        """The calling thread's preparation buffers for this plan (allocated once per thread)."""
        held = getattr(self._local, "buffers", None)
        if held is None:
            held = (
                # Rows ROW_PAD apart past the padded length: ducc0 transforms several rows
                # at once, and rows a power of two apart (2048 complex64: 16 KiB) fall in
                # the same cache sets; that FFT took 10.6 us a row, 5.5 us padded (here).
                np.empty((ANGLE_CHUNK, self.padded + ROW_PAD), dtype=np.complex64)[:, : self.padded],
                np.empty((ANGLE_CHUNK, self.length), dtype=np.complex64),
                np.empty((ANGLE_CHUNK, self.geometry.n_cols), dtype=np.float32),
            )
            self._local.buffers = held
        return held

    @staticmethod
    def _unpacker(
        images: npt.NDArray[np.complex64], p: int, out: FloatArray, first: int, count: int
    ) -> Callable[[], None]:
        def task() -> None:
            out[first + 2 * p] = images[p].real
            if 2 * p + 1 < count:
                out[first + 2 * p + 1] = images[p].imag

        return task


_cache_lock = threading.Lock()
_cached: FourierPlan | None = None


def plan_for(
    geometry: Geometry, n_slices: int, threads: int | None = None, memory: int = DEFAULT_MEMORY
) -> FourierPlan:
    """The plan for ``geometry``: the last one when it fits (same geometry, enough pairs), else a new one.

    One plan is kept: a volume's batches and the next scan of the same geometry reuse
    it; a different geometry replaces it, so at most one plan's memory stays held.
    """
    global _cached
    count = cpu_count() if threads is None else max(1, int(threads))
    pairs = pairs_for(n_slices, geometry, count, memory)
    with _cache_lock:
        plan = _cached
        if plan is not None and plan.geometry == geometry and plan.threads == count and plan.pairs >= pairs:
            return plan
        _cached = None  # free the old buffers before the new ones are allocated
        plan = FourierPlan(geometry, pairs, count)
        _cached = plan
        return plan


def release_plans() -> None:
    """Drop the kept plan and its buffers (after a volume, when memory matters more)."""
    global _cached
    with _cache_lock:
        _cached = None
