"""Dark and flat references: running means, batches, and before/after interpolation.

A *batch* is a run of darks and/or flats without projections in between. A batch
taken mid-scan replaces the previous one for the projections that follow; flats
taken after the projections are interpolated with the ones before, by frame index.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.scan import ImageKey

FloatArray = npt.NDArray[np.float32]


class RunningMean:
    """Mean of equally shaped frames, accumulated in float64 for exactness."""

    def __init__(self) -> None:
        self._sum: npt.NDArray[np.float64] | None = None
        self.count = 0

    def add(self, frame: npt.NDArray[np.generic]) -> None:
        if self._sum is None:
            self._sum = np.zeros(frame.shape, dtype=np.float64)
        elif frame.shape != self._sum.shape:
            raise ValueError(f"reference frame shape {frame.shape} != {self._sum.shape}")
        # Converted a block at a time inside the ufunc: no float64 copy of the frame
        # (32 MB at 2048^2, freshly mapped for each dark and flat).
        np.add(self._sum, frame, out=self._sum)
        self.count += 1

    def mean(self) -> FloatArray | None:
        if self._sum is None or self.count == 0:
            return None
        mean: FloatArray = np.empty(self._sum.shape, dtype=np.float32)
        np.divide(self._sum, self.count, out=mean, casting="same_kind")
        return mean


@dataclass
class ReferenceBatch:
    """Darks and flats collected between two runs of projections."""

    first_index: int  # frame index of the batch's first reference frame
    last_index: int = -1
    darks: RunningMean = field(default_factory=RunningMean)
    flats: RunningMean = field(default_factory=RunningMean)

    def add(self, key: ImageKey, index: int, frame: npt.NDArray[np.generic]) -> None:
        (self.darks if key == ImageKey.DARK else self.flats).add(frame)
        self.first_index = min(self.first_index, index)  # frames may arrive out of order
        self.last_index = max(self.last_index, index)


@dataclass(frozen=True)
class ReferenceSet:
    """The dark and flat a projection is corrected with (float32, same shape).

    ``flat_after``/``after_index`` are set once flats after the projections exist;
    :meth:`flat_for` then interpolates linearly in intensity by frame index.
    """

    version: int
    dark: FloatArray
    flat: FloatArray
    before_index: int = 0
    flat_after: FloatArray | None = None
    after_index: int = 0
    # The scan (mapping) whose reducer shared it through the ``references`` parameter,
    # which the controller keeps across scans: "" where unknown (replay, older posts).
    scan: str = ""
    # Where on the detector its arrays lie (LiveSliceGeometry.footprint), for a later scan that
    # keeps it (keep_references): "" where unknown. Its shape alone let another scan's
    # darks of other detector rows correct this one's (0.72 off, said nowhere).
    footprint: str = ""

    def flat_for(self, frame_index: int) -> FloatArray:
        if self.flat_after is None or self.after_index <= self.before_index:
            return self.flat
        w = (frame_index - self.before_index) / (self.after_index - self.before_index)
        w = min(max(w, 0.0), 1.0)
        return ((1.0 - w) * self.flat + w * self.flat_after).astype(np.float32)

    # Serialised for the dranspose ``references`` binary parameter.
    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays = {"dark": self.dark, "flat": self.flat}
        if self.flat_after is not None:
            arrays["flat_after"] = self.flat_after
        meta = np.array([self.version, self.before_index, self.after_index], dtype=np.int64)
        np.savez(buf, meta=meta, scan=np.array(self.scan), footprint=np.array(self.footprint), **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceSet:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            version, before, after = (int(v) for v in npz["meta"])
            flat_after = npz["flat_after"] if "flat_after" in npz.files else None
            scan = str(npz["scan"]) if "scan" in npz.files else ""
            footprint = str(npz["footprint"]) if "footprint" in npz.files else ""
            return cls(version, npz["dark"], npz["flat"], before, flat_after, after, scan, footprint)


def content_version(*arrays: FloatArray | None) -> int:
    """A reference set's version: a digest of its arrays.

    Workers that saw every dark and flat of a batch (distributed mode broadcasts
    them) build the same set as the reducer, bit for bit (means of integer frames
    are exact in float64, whatever the order), so both label it alike without a
    round trip; a different set never shares a version, across scans too.
    """
    digest = hashlib.blake2b(digest_size=8)
    for array in arrays:
        if array is not None:
            digest.update(np.ascontiguousarray(array, dtype=np.float32).data)  # its buffer: no bytes copy
    return max(1, int.from_bytes(digest.digest(), "little") >> 2)  # 0 means 'not corrected'


class ReferenceTracker:
    """Builds :class:`ReferenceSet` versions from a stream of darks and flats.

    Feed every dark/flat with :meth:`add`; call :meth:`close_batch` when the first
    projection after a batch is seen. A batch with only darks (or only flats) keeps
    the other kind from the previous batch, or, for the scan's first, from an earlier
    scan's set (:meth:`keep`). Versions are digests of the content
    (:func:`content_version`).
    """

    def __init__(self) -> None:
        self._open: ReferenceBatch | None = None
        self._current: ReferenceSet | None = None
        # An earlier scan's set (keep_references): the kind a batch lacks where no
        # batch of this scan came before it.
        self._kept: ReferenceSet | None = None
        self._last_projection_index = -1
        # The last batch closed with frames missing, and the set before it: a missing
        # frame that comes later joins it (:meth:`complete_late`). Its float64 sums are
        # kept only then (64 MB at 2048^2).
        self._incomplete: tuple[ReferenceBatch, ReferenceSet | None, ReferenceSet] | None = None
        # Whether the current set's darks were taken (else zeros stand in for them), and
        # how many sets the scan's batches made before its end.
        self._darks_taken = False
        self._sets_made = 0
        # Darks after the projections that corrected nothing: the scan's flats were
        # retaken mid-scan, and its projections are corrected set by set (scan_end).
        self.darks_after_unused = 0
        # Whether the darks this scan corrects with are the kept set's (keep), not zeros.
        self.darks_borrowed = False

    @property
    def current(self) -> ReferenceSet | None:
        return self._current

    @property
    def batch_open(self) -> bool:
        return self._open is not None

    @property
    def open_first_index(self) -> int | None:
        return None if self._open is None else self._open.first_index

    def add(self, key: ImageKey, index: int, frame: npt.NDArray[np.generic]) -> None:
        if key not in (ImageKey.DARK, ImageKey.FLAT):
            raise ValueError(f"not a reference frame kind: {key!r}")
        if self._open is None:
            self._open = ReferenceBatch(first_index=index)
        self._open.add(key, index, frame)

    def note_projection(self, index: int) -> None:
        self._last_projection_index = max(self._last_projection_index, index)

    @property
    def kept(self) -> ReferenceSet | None:
        """The earlier scan's set this one keeps (:meth:`keep`), if any."""
        return self._kept

    def keep(self, refs: ReferenceSet | None) -> None:
        """An earlier scan's set, kept for this one: a first batch of flats alone takes
        its dark (it took zeros: every projection -log(p/f), silently), one of darks
        alone its flat."""
        self._kept = refs

    def close_batch(self, *, scan_ended: bool = False, incomplete: bool = False) -> ReferenceSet | None:
        """Turn the open batch into the current reference set; returns it if new.

        Called when a projection follows the batch (the batch replaces the previous
        references for what follows) or, with ``scan_ended``, at the end of the scan:
        flats after the last projection are then interpolated with the earlier ones.
        ``incomplete``: frames of the batch are missing; the batch is kept for them
        (:meth:`complete_late`).
        """
        batch, self._open = self._open, None
        if batch is None:
            return None
        previous = self._current
        # Flats after the projections: interpolated with those before.
        after_projections = scan_ended and self._last_projection_index >= 0
        # Darks after the projections stand in for none before only where one set
        # corrected them all: with flats retaken mid-scan, undoing every slot with one
        # set's flat (scan_end.interpolate_flats) put the newer flat into earlier slots.
        flats_retaken = after_projections and self._sets_made > 1
        if flats_retaken and batch.darks.count > 0 and not self._darks_taken:
            self.darks_after_unused = batch.darks.count
        darks = self._darks_taken or flats_retaken
        refs = self._set_of(batch, previous, after_projections=after_projections, darks=darks, kept=self._kept)
        if refs is None:
            # Darks alone cannot correct; keep them until flats come.
            self._open = batch
            return None
        self._current = refs
        self._darks_taken = self._darks_taken or batch.darks.count > 0
        if self._kept is not None and refs.dark is self._kept.dark:
            self.darks_borrowed = True
        if not scan_ended:
            self._sets_made += 1
        if incomplete and not scan_ended:
            self._incomplete = (batch, previous, refs)
        return refs

    def complete_late(
        self, key: ImageKey, index: int, frame: npt.NDArray[np.generic]
    ) -> tuple[ReferenceSet, ReferenceSet] | None:
        """A frame missing from the batch closed incomplete, come late: that batch's set
        made again with it (the current set too, unless a newer batch closed since).
        Returns (the set it replaces, the new set); None when no batch was kept."""
        if self._incomplete is None:
            return None
        batch, previous, superseded = self._incomplete
        batch.add(key, index, frame)
        refs = self._set_of(batch, previous, after_projections=False, darks=self._darks_taken, kept=self._kept)
        assert refs is not None  # the batch made a set before, and only gained a frame
        self._incomplete = (batch, previous, refs)
        if self._current is superseded:
            self._current = refs
        return superseded, refs

    def drop_incomplete(self) -> None:
        """No more frames are taken into the batch closed incomplete: its sums go."""
        self._incomplete = None

    @staticmethod
    def _set_of(
        batch: ReferenceBatch,
        previous: ReferenceSet | None,
        after_projections: bool,
        darks: bool,
        kept: ReferenceSet | None = None,
    ) -> ReferenceSet | None:
        """The set ``batch`` makes after ``previous`` (``darks``: whether its darks were
        taken). A batch after the projections (``after_projections``) makes the set they
        are corrected with at the scan's end: flats interpolated between those before and
        its own, and its darks where none came before (they were ignored, and every
        projection kept zeros for darks: -log(p/f), not -log((p-d)/(f-d))). Where darks
        came before, those are used (as offline, for the DIAD scan). Without ``previous``
        the kind the batch lacks comes from ``kept`` (an earlier scan's set) where its
        shape fits, else darks are zeros."""
        dark = batch.darks.mean()
        flat = batch.flats.mean()
        own = dark if dark is not None else flat
        fits = kept is not None and own is not None and kept.dark.shape == own.shape
        fallback = previous if previous is not None else (kept if fits else None)
        if flat is None and fallback is None:
            return None
        new_darks = dark is not None and not darks
        if dark is None:
            dark = fallback.dark if fallback is not None else np.zeros_like(flat)
        if flat is None:
            assert fallback is not None
            flat = fallback.flat
        if dark.shape != flat.shape:
            raise ValueError(f"dark shape {dark.shape} != flat shape {flat.shape}")
        if after_projections and previous is not None and (batch.flats.count > 0 or new_darks):
            dark_used = dark if new_darks else previous.dark
            flat_after = flat if batch.flats.count > 0 else previous.flat
            return ReferenceSet(
                content_version(dark_used, previous.flat, flat_after),
                dark_used,
                previous.flat,
                previous.before_index,
                flat_after=flat_after,
                after_index=batch.first_index,
            )
        return ReferenceSet(content_version(dark, flat), dark, flat, before_index=batch.last_index)

    def reset(self, keep_references: bool) -> None:
        self._open = None
        self._incomplete = None
        self._last_projection_index = -1
        if not keep_references:
            self._current = None
            self._darks_taken = False
            self._kept = None
        self._sets_made = 0
        self.darks_after_unused = 0
        self.darks_borrowed = False
