"""The live products as sums of worker partial sums, and the ledger that keeps them exact.

Workers backproject each projection they correct into partial sums (live slices,
per window block in window mode, and the centre-of-rotation sweep) and send them
every few projections; the reducer only adds them. Results arrive out of order, a
worker may lose its last partial sum (dranspose drops what ``finish`` returns),
may have used stale references, may have used other live settings, or may be
killed. So per frame the ledger keeps the slice rows that frame *should*
contribute (its target: the slot's mean, weighted) and the rows whose
backprojection is already in the sum (its contribution), and backprojects the
difference itself. On the common path the two are equal and nothing is
backprojected here; the rare paths (references not yet shared, stale references,
a repeated angle, a frame rejected after a worker summed it, a settings change,
a lost partial sum) cost one backprojection per affected frame.

A partial sum is added only if every frame in it can be accounted for; otherwise it
is dropped whole and its frames are backprojected here (never added twice). A copy
whose contribution the ledger could not take out (rejected without its rows, or
summed with settings the ledger did not have yet) is *withdrawn*: sums holding it
are refused, and one added before it was withdrawn taints the sums, which the
scan's end then rebuilds from the sinogram (:attr:`ContributionLedger.tainted`).

Records are keyed by the copy, (frame index, dranspose event): a detector that sends
a frame twice makes two copies, each maybe summed by a worker at its own angle; the
second is a record whose target is zero, so exactly what its worker added comes out.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.messages import PartialSum
from streamtomo.pipeline.reconstruction.fbp import weight_partial_sum
from streamtomo.pipeline.streaming.live_geometry import LiveSliceGeometry

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
REJECTED_SLOT = -1  # a frame removed from the products: its target is zero
FrameKey = tuple[int, int]  # (frame index, event; -1 where the worker did not say)
_LEDGER_SERIALS = itertools.count(1)


@dataclass
class FrameRecord:
    slot: int
    angle_deg: float
    values: FloatArray  # corrected slice rows (K, cols) this frame stands for
    worker_rows: FloatArray | None  # what its worker backprojected, if the reducer can tell
    contributed: FloatArray | None = None  # rows whose backprojection is in the sums
    # The angle the contribution was backprojected at, when not ``angle_deg``: a worker
    # that paired the frame with another frame's angle (the reducer matched it anew).
    contributed_angle_deg: float | None = None


class ContributionLedger:
    """Live slices, window blocks and sweep of one geometry; thread safety is the caller's."""

    def __init__(self, geometry: LiveSliceGeometry) -> None:
        self.geometry = geometry
        # Which ledger the products come from, for readers of them (snapshot): not id(),
        # which a ledger made after the last one was freed can take over.
        self.serial = next(_LEDGER_SERIALS)
        self.live_sum = geometry.new_stack()
        self.blocks: dict[int, FloatArray] = {}  # window mode: live slices per block
        self._block_frames: dict[int, int] = {}  # placed projections per block
        # The sweep reconstructs the middle slice row at several centres: the ledger
        # keeps it exact the same way as the slices (its rows are that slice's rows).
        self.sweep_sum = geometry.new_sweep_stack() if geometry.sweep_rows is not None else None
        self._sweep_row = len(geometry.slice_positions) // 2  # geometry.sweep_position among the slice rows
        self.records: dict[FrameKey, FrameRecord] = {}
        self._early: dict[FrameKey, int] = {}  # copy -> partial sums that came before its rows
        self._needs_fix: set[FrameKey] = set()
        self._orphans: set[FrameKey] = set()  # placed frames no partial sum will bring
        # Frames of partial sums discarded before their rows came: orphans once placed.
        self._unbrought: set[FrameKey] = set()
        # Copies whose contribution the ledger cannot take out (:meth:`withdraw`).
        self.withdrawn: set[FrameKey] = set()
        # A sum holding a withdrawn copy (or a copy whose rows never came) was added:
        # only a rebuild from the sinogram makes the sums exact again.
        self.tainted = False
        self.slot_ratio: FloatArray | None = None  # final angular weights / uniform
        self.newest_frame = -1
        self.version = 0  # bumped whenever the live slices' sums change
        self.sweep_version = 0
        self.counts = {"partials": 0, "partials_discarded": 0, "backprojected_here": 0}

    # -- frames ---------------------------------------------------------------------
    def place(
        self,
        key: FrameKey,
        slot: int,
        angle_deg: float,
        values: FloatArray,
        worker_rows: FloatArray | None,
        worker_angle_deg: float | None = None,
    ) -> None:
        """A frame's slice rows are in; ``worker_rows`` None: its worker did not (or not
        with these settings) backproject it, so the reducer will. ``worker_angle_deg``:
        the worker backprojected them at that angle instead of ``angle_deg``."""
        index = key[0]
        # The worker's angle matters only where the worker summed the frame (worker_rows).
        worker_angle = worker_angle_deg if worker_rows is not None else None
        record = FrameRecord(slot, angle_deg, values, worker_rows, None, worker_angle)
        self.records[key] = record
        if slot != REJECTED_SLOT:
            self.newest_frame = max(self.newest_frame, index)
            if self.geometry.window:
                block = self.geometry.block_of(index)
                self._block_frames[block] = self._block_frames.get(block, 0) + 1
        early = self._early.pop(key, 0)
        unbrought = key in self._unbrought
        self._unbrought.discard(key)
        if early and worker_rows is not None:
            record.contributed = worker_rows * np.float32(early)
            self._needs_fix.add(key)
        elif (worker_rows is None or unbrought) and slot != REJECTED_SLOT:
            self._orphans.add(key)

    def withdraw(self, key: FrameKey) -> None:
        """A copy its worker may have summed whose contribution cannot be taken out:
        rejected without its rows (``rows_unreachable``), or a second copy summed with
        settings this ledger does not have. Sums holding it are refused from now on; one
        added already leaves the sums tainted."""
        self.withdrawn.add(key)
        if self._early.pop(key, 0):
            self.tainted = True

    def slot_changed(self, slot: int) -> None:
        """A repeated angle changes the target of every frame in the slot."""
        self._needs_fix.update(k for k, r in self.records.items() if r.slot == slot and r.contributed is not None)

    def all_changed(self) -> None:
        self._needs_fix.update(k for k, r in self.records.items() if r.contributed is not None)

    # -- partial sums ---------------------------------------------------------------
    def add_partial(self, partial: PartialSum) -> bool:
        """Add a worker's partial sums; False (and nothing added) if it cannot be accounted for."""
        if partial.recon_id != self.geometry.recon_id or not self._accountable(partial):
            self.counts["partials_discarded"] += 1
            for key in partial.frame_keys:  # their rows, if here or once here, are backprojected here
                if key not in self.records:
                    # Rows still to come (held for their references, their PandA row, or
                    # simply later): with worker rows they would wait for this sum.
                    self._unbrought.add(key)
                elif self.records[key].contributed is None:
                    self._orphans.add(key)
            return False
        for stack in partial.blocks.values():
            if stack.shape != self.live_sum.shape:
                self.counts["partials_discarded"] += 1
                logger.warning(
                    "a partial sum of shape %s does not fit the live slices %s: dropped",
                    stack.shape,
                    self.live_sum.shape,
                )
                return False
        for block, stack in partial.blocks.items():
            self.live_sum += stack
            if self.geometry.window and self._may_show(block):
                self._block(block)[...] += stack
        if partial.sweep is not None and self.sweep_sum is not None and partial.sweep.shape == self.sweep_sum.shape:
            self.sweep_sum += partial.sweep
            self.sweep_version += 1
        self.version += 1
        self.counts["partials"] += 1
        for key in partial.frame_keys:
            record = self.records.get(key)
            if record is None:  # rows not here yet (results arrive out of order)
                self._early[key] = self._early.get(key, 0) + 1
                continue
            assert record.worker_rows is not None
            record.contributed = (
                record.worker_rows if record.contributed is None else record.contributed + record.worker_rows
            )
            self._orphans.discard(key)
            self._needs_fix.add(key)
        return True

    def _accountable(self, partial: PartialSum) -> bool:
        return all(
            key not in self.withdrawn and (key not in self.records or self.records[key].worker_rows is not None)
            for key in partial.frame_keys
        )

    def _may_show(self, block: int) -> bool:
        """Whether a window block may still be shown: one before the window's first
        never is again (the newest frame only moves on), so its sum is not made (a
        live settings change backfills every frame of the scan; before, it built the
        blocks of the whole scan, dropped at the next publish)."""
        window = self.window_blocks()
        return window is None or block >= window[0]

    def _block(self, block: int) -> FloatArray:
        stack = self.blocks.get(block)
        if stack is None:
            # Written as soon as it is made, so mapping it ahead gains nothing; a live
            # settings change backfills every block of the window at once (no thread each).
            stack = self.blocks[block] = np.zeros_like(self.live_sum)
        return stack

    def take_orphan_partials(self) -> list[FrameKey]:
        """Frame copies some partial sum holds whose rows never came (known at the end):
        their backprojection is in the sums, so these are tainted."""
        orphans, self._early = sorted(self._early), {}
        self.tainted |= bool(orphans)
        return orphans

    # -- reconciliation -------------------------------------------------------------
    def _target(self, record: FrameRecord, slot_counts: npt.NDArray[np.int32]) -> FloatArray:
        if record.slot == REJECTED_SLOT:
            return np.zeros_like(record.values)
        scale = np.float32(1.0 / slot_counts[record.slot])
        if self.slot_ratio is not None:
            scale *= self.slot_ratio[record.slot]
        return record.values * scale

    def reconcile(self, slot_counts: npt.NDArray[np.int32], backfill: bool = False) -> int:
        """Make the sums match the targets; returns backprojections done here.

        Without ``backfill`` only frames a partial sum covered, and frames no partial
        sum will bring, are fixed; frames whose partial sum may still come are left to
        their worker.
        """
        keys = list(self.records) if backfill else sorted(self._needs_fix | self._orphans)
        done = 0
        for key in keys:
            index = key[0]
            record = self.records[key]
            if record.contributed is None and not backfill and key not in self._orphans:
                continue
            target = self._target(record, slot_counts)
            if record.contributed is not None and record.contributed_angle_deg is not None:
                # Take the contribution out where it was made, then put the target in.
                self._backproject(index, -record.contributed, record.contributed_angle_deg)
                record.contributed, record.contributed_angle_deg = None, None
            delta = target if record.contributed is None else target - record.contributed
            if np.any(delta):
                self._backproject(index, delta, record.angle_deg)
                done += 1
            # In the sums at the frame's own angle from now on: a worker's angle kept here
            # would take the next fix's contribution out where it never was.
            record.contributed, record.contributed_angle_deg = target, None
        self._needs_fix.clear()
        self._orphans.clear()
        self.counts["backprojected_here"] += done
        if done:
            self.version += 1
        return done

    def _backproject(self, index: int, rows: FloatArray, angle_deg: float) -> None:
        self.geometry.add(self.live_sum, rows, angle_deg)
        block = self.geometry.block_of(index)
        if self.geometry.window and self._may_show(block):
            self.geometry.add(self._block(block), rows, angle_deg)
        if self.sweep_sum is not None:
            self.geometry.add_sweep(self.sweep_sum, rows[self._sweep_row], angle_deg)
            self.sweep_version += 1

    # -- outputs --------------------------------------------------------------------
    def slices(self, n_projections: int) -> FloatArray:
        """pi / 2n for n projections, whatever the range (a 360-degree scan's n is twice)."""
        return weight_partial_sum(self.live_sum, n_projections)

    def window_blocks(self) -> tuple[int, int] | None:
        """The first and last window block of the live slices in window mode (None otherwise)."""
        if not self.geometry.window or self.newest_frame < 0:
            return None
        first_frame = self.newest_frame - self.geometry.window_frames + 1
        first_block = -(-first_frame // self.geometry.window_block)  # the first block starting in the window
        return first_block, self.geometry.block_of(self.newest_frame)

    def window_count(self) -> int | None:
        """The projections :meth:`window_sum` holds, without summing (None outside window mode)."""
        blocks = self.window_blocks()
        return None if blocks is None else self._frames_in(*blocks)

    def _frames_in(self, first_block: int, last_block: int) -> int:
        return sum(self._block_frames.get(block, 0) for block in range(first_block, last_block + 1))

    def window_sum(self) -> tuple[FloatArray, int] | None:
        """The unweighted sum of the whole blocks within the last half turn before the
        newest frame, and its projection count; older blocks are dropped (freed)."""
        blocks = self.window_blocks()
        if blocks is None:
            return None
        first_block, last_block = blocks
        for block in [b for b in self.blocks if b < first_block]:
            del self.blocks[block]
        # A temporary of every publish: not mapped ahead (that costs a thread and a
        # mapping per call); below malloc's 32 MiB threshold it is reused heap memory.
        total = np.zeros_like(self.live_sum)
        for block in range(first_block, last_block + 1):
            if block in self.blocks:
                total += self.blocks[block]
        return total, self._frames_in(first_block, last_block)
