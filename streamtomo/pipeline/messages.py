"""Results a worker sends to the reducer: small, picklable dataclasses.

dranspose pickles whatever ``process_event`` returns; a worker returns a list of
these (usually one). Arrays are only the rows the scan needs, never whole frames
unless every row is a sinogram row.

A received message's rows may be borrowed: a view of the transport's memory (a
ZeroMQ frame, or a slot of the worker's shared-memory ring that the worker reuses
once the view is gone). Whatever keeps a message past handling it keeps
:func:`with_own_rows` of it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from streamtomo.pipeline.scan import ImageKey


@dataclass(frozen=True)
class DetectorInfo:
    """The detector shape, from the first frame a worker decodes."""

    rows: int
    cols: int
    dtype: str


@dataclass(frozen=True)
class ReferenceRows:
    """A dark or flat frame's sinogram rows, for the reducer's reference means."""

    frame_index: int
    key: ImageKey
    rows: npt.NDArray[np.generic]
    detector: DetectorInfo
    event: int = -1  # the dranspose event that carried it (-1: not known)
    digest: int = 0  # frame_digest of the frame (0: not known)


@dataclass(frozen=True)
class ReferenceCopy:
    """A broadcast dark or flat whose rows another worker sends: this worker built its
    references from the frame too, and tells the reducer only that its copy arrived.

    dranspose broadcasts darks and flats to every worker; the first
    ``reference_senders`` of the event's workers in name order send the rows, not
    every worker (see :mod:`streamtomo.workers.broadcast_senders`).
    """

    frame_index: int
    key: ImageKey
    event: int


@dataclass(frozen=True)
class ProjectionRows:
    """One projection's sinogram rows.

    ``reference_version`` 0: ``rows`` are raw detector values (the worker had no
    references yet) and the reducer corrects them; otherwise they are -log corrected
    float32 with that reference version, and the worker has backprojected the slice
    rows among them into its partial sum under ``recon_id`` (empty: it did not).
    ``pixels_repaired``: dead or saturated pixels the worker repaired in ``rows``.
    """

    frame_index: int
    angle_deg: float
    angle_measured: bool  # False: nominal angle from the frame index
    rows: npt.NDArray[np.generic]
    reference_version: int
    recon_id: str
    detector: DetectorInfo
    # The dranspose event that carried the frame: with the frame number, the identity
    # of this copy (a detector may send a frame twice; a broadcast reaches every worker).
    event: int = -1
    # >= 0: the frame's event carried another frame's PandA row; its angle is that of
    # PandA row ``angle_row``, joined by the reducer (``angle_deg`` is NaN until then).
    # NOMINAL_ROW: its event carried no row at all; the reducer looks for the row with
    # the frame's nominal angle (check_nominal_angles).
    angle_row: int = -1
    pixels_repaired: int = 0
    # frame_digest of the frame as decoded (0: not known): two copies of one frame
    # number with other digests are two exposures, not a copy sent twice.
    digest: int = 0
    # The newest dark or flat (scan position) its worker had taken before this frame, -1
    # none: the reducer places the frame only once that one is here too. Flats retaken
    # mid-scan reach the reducer through one worker, and a projection after them through
    # another could come first: it was corrected with the old flats, for good.
    references_through: int = -1


# ProjectionRows.angle_row of a projection with no readable PandA row of its own (its
# event, or the event of the row it was joined to by number, brought a header, an END
# or an unreadable row, or that row never came): with check_nominal_angles its row is
# the one nearby with its nominal angle.
NOMINAL_ROW = -2


@dataclass(frozen=True)
class AngleRow:
    """One PandA row as a worker read it: the rotation angle of the scan's frame ``row``
    (None: unreadable; ``reason`` is the rejection reason, ``detail`` the message). Tiny;
    sent for every row, so that frames that arrived with another frame's row can be
    joined with their own."""

    row: int
    angle_deg: float | None
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True)
class PartialSum:
    """A worker's unweighted backprojection sums over ``frame_indices``.

    ``events`` (same length, when known) names the copy of each frame that was summed:
    the reducer takes a duplicate's contribution back out by it.

    ``blocks`` maps a window block (``frame_index // window_block``) to the live
    slices' sum over the frames of that block; in accumulate mode everything is
    block 0. ``sweep`` is the centre-of-rotation sweep's sum over the same frames.
    The reducer adds these and weights the totals once: it backprojects nothing.
    """

    worker: str
    recon_id: str
    frame_indices: tuple[int, ...]
    blocks: dict[int, npt.NDArray[np.float32]]
    sweep: npt.NDArray[np.float32] | None = None
    events: tuple[int, ...] = ()

    @property
    def frame_keys(self) -> tuple[tuple[int, int], ...]:
        """(frame index, event) of every summed frame; event -1 where not sent."""
        events = self.events if len(self.events) == len(self.frame_indices) else (-1,) * len(self.frame_indices)
        return tuple(zip(self.frame_indices, events, strict=True))

    @property
    def slices(self) -> npt.NDArray[np.float32]:
        """The live slices' sum over every frame (all blocks)."""
        arrays = list(self.blocks.values())
        if len(arrays) == 1:
            return arrays[0]
        total = arrays[0].copy()
        for array in arrays[1:]:
            total += array
        return total


@dataclass(frozen=True)
class Rejected:
    """A frame (or message) that could not be used, and why (a short reason key)."""

    frame_index: int | None
    reason: str
    detail: str
    event: int = -1
    # False for a message that is no frame (a PandA header mid-capture): counted by its
    # reason, not as a frame received, so frames_received still counts detector frames.
    frame: bool = True

    @classmethod
    def notice(cls, reason: str, detail: str, event: int = -1) -> Rejected:
        """What the streams showed that is no frame's rejection (``frame`` False); the
        reducer counts it once per (reason, event), event -1 once per scan."""
        return cls(None, reason, detail, event, frame=False)


@dataclass(frozen=True)
class StreamEnded:
    """The detector stream's series_end reached this worker."""

    frames_announced: int | None = None


@dataclass(frozen=True)
class StreamStep:
    """An event in which the PandA's and the detector's streams show they are out of
    step (one ended before the other): ``pandas_more`` when the PandA sent more
    messages than the detector. The reducer decides at the scan's end whether the
    detector's own losses or extras explain it (its frames carry numbers, so those
    harm nothing) or the PandA's rows were paired with the wrong frames."""

    event: int
    pandas_more: bool
    detail: str


@dataclass(frozen=True)
class PandaEnded:
    """The PandA's capture END came in ``event``. Its rows are numbered by their events
    (the header is event 0), so the event of its last END against the scan's frames
    says how many messages too many or too few the PandA sent
    (:func:`~streamtomo.pipeline.formats.pcap_checks.pandas_count`)."""

    event: int


@dataclass
class WorkerResult:
    """Everything one event produced (dranspose allows one result per event), and what
    earlier events of the same worker produced where it held their results back."""

    items: list[
        ReferenceRows
        | ReferenceCopy
        | ProjectionRows
        | PartialSum
        | Rejected
        | StreamEnded
        | AngleRow
        | StreamStep
        | PandaEnded
    ] = field(default_factory=list)
    # Other events whose results this one carries (held back by its worker to go
    # together: streamtomo.workers.held_results); the reducer reports them reduced too.
    carried_events: tuple[int, ...] = ()
    # The scan it was made for (the dranspose mapping uuid; "": not known, as in
    # replay). dranspose's ResultData names no scan: a worker that stalled in one scan
    # and went on once the next had started sent its old frames to the next scan's
    # reducer, at their old frame numbers and angles.
    scan: str = ""

    def is_for(self, scan: str) -> bool:
        """Whether this result belongs to ``scan`` (either one not known: it does)."""
        return not self.scan or not scan or self.scan == scan


RowsMessage = TypeVar("RowsMessage", bound="ProjectionRows | ReferenceRows")


def with_own_rows(msg: RowsMessage) -> RowsMessage:
    """``msg`` with rows of its own, for a message held until later: a borrowed view
    would keep its transport's memory (a worker's ring slot) from being reused."""
    rows = msg.rows
    if isinstance(rows, np.ndarray) and not rows.flags.owndata:
        return replace(msg, rows=np.array(rows))
    return msg


# Pixels a digest samples, on a grid over the frame: a copy sent twice has them all
# equal; two exposures differ in most of them (photon noise), two darks in many.
DIGEST_GRID = 32


def frame_digest(data: npt.NDArray[np.generic]) -> int:
    """A digest of ``data`` from a :data:`DIGEST_GRID` x :data:`DIGEST_GRID` grid of its
    pixels (never 0): microseconds, where hashing a 2048^2 frame whole takes
    milliseconds; any strides, nothing copied but the samples."""
    rows, cols = data.shape[0], data.shape[-1]
    sample = data[:: max(1, rows // DIGEST_GRID), ..., :: max(1, cols // DIGEST_GRID)]
    return zlib.crc32(np.ascontiguousarray(sample).tobytes()) | 1
