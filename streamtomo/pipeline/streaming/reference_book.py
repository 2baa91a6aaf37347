"""The reducer's darks and flats: batches, versions, and which set corrects a frame.

Workers correct with the references the reducer shares (a dranspose parameter) and
label their rows with its version. The reducer keeps every version it made (and
those of earlier scans that workers may still hold), so it can re-correct rows
labelled with a stale set, and it decides which set applies to each projection:
the newest batch of this scan taken before it, else a kept set of an earlier scan,
else this scan's references taken after the projections.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from streamtomo.pipeline.correction.corrector import Corrector
from streamtomo.pipeline.correction.references import ReferenceSet, ReferenceTracker
from streamtomo.pipeline.scan import ImageKey

logger = logging.getLogger(__name__)


class ReferenceBook:
    def __init__(
        self,
        keep_references: bool,
        on_references: Callable[[ReferenceSet], None] | None = None,
        on_lacking: Callable[[ReferenceSet], None] | None = None,
    ) -> None:
        self.keep_references = keep_references
        self.on_references = on_references  # a set closed (workers may need it)
        self.on_lacking = on_lacking  # a worker corrected with another set than this one
        # Versions are digests of the content: unique across scans and reducer
        # instances (workers may still hold an earlier scan's set), and equal to the
        # version a worker gives the same set when it built it itself.
        self.tracker = ReferenceTracker()
        self._versions: dict[int, ReferenceSet] = {}
        self._known_only: set[int] = set()  # earlier scans' sets, and replaced ones: re-correction only
        self._correctors: dict[tuple[int, bool, float], Corrector] = {}
        self._ordinal: dict[int, int] = {}  # version -> 1, 2, ... in this scan (for people)
        # version -> the set made again from its batch with a frame that came late
        self._replaced: dict[int, ReferenceSet] = {}

    def reset(self, keep_references: bool) -> None:
        self.keep_references = keep_references
        self.tracker.reset(keep_references)
        self._ordinal.clear()
        self._replaced.clear()
        if not keep_references:
            self._versions.clear()
            self._correctors.clear()
            self._known_only.clear()

    # -- incoming -------------------------------------------------------------------
    def add(self, key: ImageKey, frame_index: int, rows: np.ndarray) -> None:
        self.tracker.add(key, frame_index, rows)

    def note_projection(self, frame_index: int) -> None:
        self.tracker.note_projection(frame_index)

    @property
    def batch_open(self) -> bool:
        return self.tracker.batch_open

    @property
    def open_first_index(self) -> int | None:
        return self.tracker.open_first_index

    @property
    def current(self) -> ReferenceSet | None:
        return self.tracker.current

    def close_batch(self, scan_ended: bool = False, incomplete: bool = False) -> ReferenceSet | None:
        """Close the open batch; its set, or None. ``incomplete``: frames of it are
        missing, taken should they come (:meth:`complete_late`)."""
        if not self.tracker.batch_open:
            return None
        refs = self.tracker.close_batch(scan_ended=scan_ended, incomplete=incomplete)
        if refs is None:
            return None
        when = "after the projections" if refs.flat_after is not None else f"before frame {refs.before_index}"
        self._add_own(refs, f"ready (taken {when})")
        return refs

    def complete_late(self, key: ImageKey, index: int, rows: np.ndarray) -> tuple[ReferenceSet, ReferenceSet] | None:
        """A frame the batch closed incomplete lacked: its set made again with it.
        Returns (the set it replaces, the new one); None when no batch was kept. The
        replaced set still undoes rows corrected with it, and is applicable no more."""
        made = self.tracker.complete_late(key, index, rows)
        if made is None:
            return None
        superseded, refs = made
        self._replaced[superseded.version] = refs
        self._known_only.add(superseded.version)
        self._add_own(refs, f"made again with frame {index}, which came late")
        return superseded, refs

    def inherits(self, refs: ReferenceSet, version: int, key: ImageKey) -> bool:
        """Whether ``refs`` took its dark (``key`` DARK) or flat from set ``version``, or
        from a set made again from its batch since (its batch had none of that kind)."""
        earlier = self._versions.get(version)
        while earlier is not None:
            if refs is earlier:
                return False
            if (refs.dark is earlier.dark) if key == ImageKey.DARK else (refs.flat is earlier.flat):
                return True
            earlier = self._replaced.get(earlier.version)
        return False

    def current_for(self, refs: ReferenceSet) -> ReferenceSet:
        """``refs``, or the set made again from its batch since (a frame came late)."""
        while refs.version in self._replaced:
            refs = self._replaced[refs.version]
        return refs

    def drop_incomplete(self) -> None:
        """No more frames are taken into the batch closed incomplete (every one it lacked
        came, or they were taken for lost): its sums go."""
        self.tracker.drop_incomplete()

    def _add_own(self, refs: ReferenceSet, what: str) -> None:
        self._versions[refs.version] = refs
        # The same darks and flats as an earlier scan (a recording replayed twice):
        # the same version, and now this scan's own.
        self._known_only.discard(refs.version)
        self._ordinal[refs.version] = len(self._ordinal) + 1
        logger.info("darks and flats set %d %s", self._ordinal[refs.version], what)
        if refs.flat_after is None and self.on_references is not None:
            self.on_references(refs)

    def worker_lacks(self, refs: ReferenceSet) -> None:
        """A worker's rows came corrected with another set than ``refs`` (or raw)."""
        if self.on_lacking is not None:
            self.on_lacking(refs)

    def remember(self, refs: ReferenceSet, applicable: bool) -> None:
        """References from an earlier scan: used for this one only if ``applicable``
        (``keep_references``); otherwise only to re-correct rows workers labelled with them."""
        # Versions order references within a scan only, and frame indices belong to
        # the scan that took them: an earlier scan's set is never compared with ours.
        self._versions[refs.version] = refs
        self._known_only.add(refs.version)
        if applicable:
            self.tracker.keep(refs)

    @property
    def kept(self) -> ReferenceSet | None:
        """The earlier scan's set this one applies (keep_references), if any."""
        return self.tracker.kept

    def forget_kept(self) -> None:
        """The kept set does not fit this scan's detector rows: applied nowhere (it is
        still known, to re-correct rows a worker corrected with it)."""
        self.tracker.keep(None)

    # -- lookups --------------------------------------------------------------------
    def knows(self, version: int) -> bool:
        return version in self._versions

    def describe(self, version: int) -> str:
        ordinal = self._ordinal.get(version)
        return f"set {ordinal}" if ordinal is not None else "a set of an earlier scan"

    def _ours(self) -> list[ReferenceSet]:
        return [r for r in self._versions.values() if r.version not in self._known_only and r.flat_after is None]

    def applicable(self, frame_index: int) -> ReferenceSet | None:
        """The newest reference set of this scan taken before ``frame_index``; else the
        kept set of an earlier scan; else this scan's references taken after the projections."""
        ours = self._ours()
        before = [r for r in ours if r.before_index < frame_index]
        if before:
            return max(before, key=self._taken)
        if self.tracker.kept is not None:
            return self.tracker.kept
        return max(ours, key=self._taken) if ours else None

    def newest_before_scan_end(self) -> Corrector:
        """The corrector of the newest set of this scan taken before projections."""
        return self.corrector(max(self._ours(), key=self._taken).version)

    def _taken(self, refs: ReferenceSet) -> tuple[int, int]:
        """When ``refs`` was taken: the frame its batch ended before, then the order it
        was closed in. Not its version, a content digest: max(version) picked the
        first of two batches in 5 of 6 scans that retook their flats mid-scan."""
        return refs.before_index, self._ordinal.get(refs.version, 0)

    def corrector(self, version: int, repair: bool = False, saturation_level: float = 0.0) -> Corrector:
        key = (version, repair, saturation_level)
        if key not in self._correctors:
            refs = self._versions[version]
            self._correctors[key] = Corrector(
                refs.dark, refs.flat, version, repair=repair, saturation_level=saturation_level
            )
        return self._correctors[key]
