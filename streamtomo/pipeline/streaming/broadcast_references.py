"""Darks and flats a worker saw itself: correction from the first projection on.

In distributed mode the darks and flats are broadcast to every worker, so each
worker holds the whole first batch by the time the first projection reaches it.
Built here, the set is the reducer's bit for bit (integer frames: their float64 sums
are exact in any order) and carries the same version (a digest of the content), so
a worker corrects and backprojects every projection itself instead of sending raw
rows while the reducer's set travels through the controller (a round trip of about
a second, that is a hundred frames at 100 frames/s, which the reducer would have to
correct and backproject alone). The reducer's set, when it arrives, takes over
(mid-scan batches, the header rule, float frames, replay).

:func:`built_by_workers` is the same rule seen from the reducer: a set every worker
builds itself need not travel through the controller. Posting it anyway cost every
service a re-fetch of every parameter (megabytes at 2048^2, twice per scan with the
consistency check's redistribute), and a redistribute near the end of a short scan
could arrive with the controller's single ``finished`` update in one Redis read, of
which dranspose applies only the last.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.correction.references import ReferenceSet, ReferenceTracker
from streamtomo.pipeline.scan import ImageKey


def built_by_workers(config: PipelineConfig, refs: ReferenceSet, dtype: str) -> bool:
    """True when every worker that saw the broadcast darks and flats built ``refs``
    itself (:class:`BroadcastReferences`): the first batch of a ``counts`` scan, of
    integer frames, taken before the projections. A worker that did not (it started
    late, a frame of the batch was lost) sends raw or stale rows, and the reducer
    shares the set then."""
    return (
        workers_build_first_batch(config, dtype)
        and refs.flat_after is None
        and refs.before_index == config.first_projection() - 1
    )


def first_batch_of_workers(config: PipelineConfig, refs: ReferenceSet, dtype: str) -> bool:
    """True when ``refs`` is a set of the first batch, which workers build themselves
    (whole, where this one may lack a frame still on its way)."""
    return (
        workers_build_first_batch(config, dtype)
        and refs.flat_after is None
        and refs.before_index < config.first_projection()
    )


def workers_build_first_batch(config: PipelineConfig, dtype: str) -> bool:
    """Whether workers build the first batch's set from the broadcast darks and flats:
    a ``counts`` scan (the batch's frames are known) of integer frames."""
    return _first_batch_known(config) and bool(np.issubdtype(np.dtype(dtype), np.integer))


def _first_batch_known(config: PipelineConfig) -> bool:
    """Whether the frames before the first projection are known (``counts``) and make
    the reducer's set alone. With ``keep_references`` a first batch of one kind takes
    the other from the reducer's earlier scan, which workers do not hold (play empties
    ``references`` for a scan that takes darks or flats): what they built differed from
    the reducer's set, so they wait for its set and send raw rows until it comes."""
    if config.kind_rule != "counts" or config.first_projection() == 0:
        return False
    return not config.keep_references or takes_both_kinds_first(config)


def takes_both_kinds_first(config: PipelineConfig) -> bool:
    """Whether the layout (``counts``) has darks and flats before the first projection:
    the scan then never uses an earlier scan's set."""
    if config.kind_rule != "counts":
        return False
    kinds = set()
    for kind, count in config.frame_segments():
        if kind == ImageKey.PROJECTION:
            break
        if count:
            kinds.add(kind)
    return {ImageKey.DARK, ImageKey.FLAT} <= kinds


class BroadcastReferences:
    def __init__(self, config: PipelineConfig) -> None:
        # Known only with the counts rule: the first batch is the frames before the first projection.
        before = config.first_projection() if config.kind_rule == "counts" else 0
        self._expected = before  # positions 0 .. before - 1
        self._seen: set[int] = set()
        self._tracker = ReferenceTracker()
        self._usable = _first_batch_known(config)
        self.current: ReferenceSet | None = None

    def add(self, key: ImageKey, index: int, rows: npt.NDArray[np.generic]) -> None:
        if not self._usable or not 0 <= index < self._expected or index in self._seen:
            return
        if not np.issubdtype(rows.dtype, np.integer):
            self._usable = False  # float sums depend on their order: wait for the reducer's
            return
        self._tracker.add(key, index, rows)
        self._seen.add(index)

    def for_projection(self) -> ReferenceSet | None:
        """The set, once every frame of the first batch was seen here."""
        if self.current is None and self._usable and len(self._seen) == self._expected:
            self.current = self._tracker.close_batch()
        return self.current
