"""Sinogram assembly: corrected rows placed into the sinogram stack by angle.

Storage is angle-major, ``(angles, rows, cols)``: one projection's rows land as one
contiguous block (a memory copy, one page run), where a ``(rows, angles, cols)``
array would take one strided write per row. Readers see ``data``, a
``(rows, angles, cols)`` view of the same memory (the published layout), so
nothing is copied to serve them. Its pages are mapped in the background as the scan
starts (:mod:`.prefault`), not by page faults on the frame path.

Memory reused from an earlier scan is not cleared when the scan starts: a slot's
first projection overwrites it whole, so only slots never filled need zeros, and
which those are is known from ``counts``. Until :meth:`SinogramAssembler.zero_unfilled`
(at the scan's end) those slots must read as zero (:meth:`SinogramAssembler.unfilled_slots`);
the published layout masks every slot its published counts leave empty, which covers
them and the slots filled since that publish.

Angle slots come from the measured angle: slot ``round((angle - start) / step)``,
accepted when within ``tolerance`` steps of the slot. A grid of a whole turn takes
slots modulo the turn: an angle one turn on (a 360-degree scan's endpoint) is the
same slot. Frames arrive in any order.
Two frames in one slot (a repeated angle) are averaged; the same frame twice is a
duplicate and is refused by the caller before it gets here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.streaming.prefault import ArrayPool, prefaulted_zeros

FloatArray = npt.NDArray[np.float32]


class UnknownAngleError(ValueError):
    """The measured angle matches no slot of the scan."""


@dataclass(frozen=True)
class AngleGrid:
    """Nominal angle slots of a scan: ``start + i * range / n`` for ``i < n``."""

    start: float
    range: float
    n: int
    tolerance: float = 0.5  # in steps

    @classmethod
    def of(cls, config: PipelineConfig) -> AngleGrid:
        """The scan's grid: ``angle_slots`` slots of ``slot_step`` from ``angle_start``."""
        slots, step = config.angle_slots(), config.slot_step
        return cls(config.angle_start, step * slots, slots, config.angle_tolerance)

    @property
    def step(self) -> float:
        return self.range / self.n

    @property
    def full_turn(self) -> bool:
        return abs(self.range - 360.0) <= 1e-6 * 360.0

    def describe(self) -> str:
        last = self.start + self.step * (self.n - 1)
        return (
            f"the grid of {self.n} angles from {self.start:g} deg in steps of {self.step:.6g} deg "
            f"(to {last:.6g}; tolerance {self.tolerance:g} step)"
        )

    def same_turn(self, angle_deg: float, slot: int) -> float:
        """``angle_deg`` moved by whole turns next to its slot's nominal angle, so a
        slot's mean angle averages 0 and 360 as 0, not 180."""
        if not self.full_turn:
            return angle_deg
        nominal = self.start + self.step * slot
        return angle_deg - 360.0 * round((angle_deg - nominal) / 360.0)

    def nominal(self) -> npt.NDArray[np.float64]:
        return self.start + self.step * np.arange(self.n, dtype=np.float64)

    def slot(self, angle_deg: float) -> int:
        if not np.isfinite(angle_deg):
            raise UnknownAngleError(f"angle {angle_deg} is not finite")
        position = (angle_deg - self.start) / self.step
        if not math.isfinite(position):  # a finite angle far off the grid: 1e308 / 0.5 deg
            raise UnknownAngleError(f"angle {angle_deg:.4g} deg matches no slot of {self.describe()}")
        # Half a step off (ties) goes down, always: round() sent them to the even slot, so
        # angles half a step past the grid (a mid-exposure mean) shared every second slot.
        nearest = math.ceil(position - 0.5)
        index = nearest
        if self.full_turn and abs(position - index) <= self.tolerance + 1e-9:
            index %= self.n
        if not (0 <= index < self.n) or abs(position - nearest) > self.tolerance + 1e-9:
            raise UnknownAngleError(f"angle {angle_deg:.4f} deg matches no slot of {self.describe()}")
        return index


class SinogramAssembler:
    """Owns the sinogram stack and the per-slot bookkeeping."""

    def __init__(self, n_rows: int, grid: AngleGrid, n_cols: int, pool: ArrayPool | None = None) -> None:
        self.grid = grid
        shape = (grid.n, n_rows, n_cols)
        fresh = True
        if pool is None:
            self.by_angle: FloatArray = prefaulted_zeros(shape)
        else:
            self.by_angle, fresh = pool.reuse("sinogram", shape)
        # Slots not filled yet may hold an earlier scan's rows (see the module's doc).
        self.stale = not fresh
        self.data: FloatArray = self.by_angle.transpose(1, 0, 2)  # (rows, angles, cols) view
        self.counts = np.zeros(grid.n, dtype=np.int32)
        self._angle_sums = np.zeros(grid.n, dtype=np.float64)
        self.dirty_slots: set[int] = set()  # changed since the publisher last looked

    @property
    def n_filled(self) -> int:
        return int(np.count_nonzero(self.counts))

    def filled_slots(self) -> npt.NDArray[np.intp]:
        return np.flatnonzero(self.counts)

    def missing_slots(self) -> npt.NDArray[np.intp]:
        return np.flatnonzero(self.counts == 0)

    def angles(self) -> npt.NDArray[np.float64]:
        """Measured angle per slot (mean of its frames), nominal where empty."""
        out = self.grid.nominal()
        filled = self.counts > 0
        out[filled] = self._angle_sums[filled] / self.counts[filled]
        return out

    def mean_angle(self, slot: int) -> float | None:
        """The mean measured angle of the frames in ``slot`` (None: empty)."""
        count = int(self.counts[slot])
        return None if count == 0 else float(self._angle_sums[slot]) / count

    @property
    def nbytes(self) -> int:
        return int(self.by_angle.nbytes)

    def place(self, slot: int, angle_deg: float, rows: FloatArray) -> int:
        """Add ``rows`` (n_rows, n_cols) at ``slot``; returns the slot's new count."""
        if rows.shape != self.by_angle.shape[1:]:
            raise ValueError(f"rows shape {rows.shape} != sinogram rows x cols {self.by_angle.shape[1:]}")
        count = int(self.counts[slot]) + 1
        view = self.by_angle[slot]
        if count == 1:
            view[...] = rows
        else:  # running mean of repeated angles (rare: no temporaries on the common path)
            view += (rows - view) / count
        self.counts[slot] = count
        self._angle_sums[slot] += angle_deg
        self.dirty_slots.add(slot)
        return count

    def take_dirty_slots(self) -> list[int]:
        dirty, self.dirty_slots = sorted(self.dirty_slots), set()
        return dirty

    def unfilled_slots(self) -> npt.NDArray[np.bool_] | None:
        """Per slot, True where the memory does not hold this scan's rows (never
        filled, and not zeroed yet): readers must see zeros there. None: every slot
        reads as it is."""
        if not self.stale:
            return None
        unfilled: npt.NDArray[np.bool_] = self.counts == 0
        return unfilled

    def zero_unfilled(self) -> None:
        """Zero the slots no projection filled (at the scan's end, when the missing
        angles are few): from then on the memory reads as the scan's sinogram."""
        if self.stale:
            self.by_angle[self.counts == 0] = 0.0
            self.stale = False
