"""Darks and flats that reach the reducer after their batch was closed without them.

A batch closes once every frame before the first projection after it is here, or,
past a bound of waiting projections, without the frames still missing (a lost or
slow result). In distributed mode every worker built the first batch's set itself
from the broadcast frames, so its rows are corrected with the whole set: a version
the reducer, lacking a frame, never made. Before, every projection was then rejected
and the scan failed; the frame, when it came, became a batch of its own.

:class:`LateReferences` is the reducer's record of the batch closed incomplete: the
frames it lacks, the set it made, the projections placed with that set (to be
corrected again when a frame comes), and the wait for them, bounded like the first
one. Past it the frames are taken for lost (:meth:`give_up`); one that comes even so
is not used (:meth:`came_too_late`): the projections went on with the set without it.
"""

from __future__ import annotations

from collections.abc import Sequence

from streamtomo.pipeline.scan import ImageKey
from streamtomo.pipeline.streaming.contributions import FrameKey

REFERENCE_KINDS = (ImageKey.DARK, ImageKey.FLAT)


class LateReferences:
    def __init__(self) -> None:
        self.missing: set[int] = set()  # frames the batch lacks, while they are waited for
        self.version = 0  # the set the incomplete batch made (and, once remade, its newest)
        self.first_version = 0  # the set it made when it closed
        self.placed: list[FrameKey] = []  # projections placed with that set
        self.arrived = 0  # projections since it closed: the wait's bound
        self.given_up: set[int] = set()  # frames taken for lost

    @property
    def awaiting(self) -> bool:
        return bool(self.missing)

    def closing(self, missing: Sequence[int]) -> None:
        """A batch closes without ``missing`` (said before its set is shared: whoever
        is told of the set may ask :attr:`missing`)."""
        self.missing = set(missing)
        self.version = self.first_version = 0
        self.placed.clear()
        self.arrived = 0

    def closed(self, version: int | None) -> None:
        """The set it made; None: it made none (darks alone), nothing is awaited."""
        if version is None:
            self.missing.clear()
        else:
            self.version = self.first_version = version

    def projection_arrived(self, frame_index: int) -> None:
        self.arrived += 1
        # A frame the batch lacked (kind_rule header: any frame before the projection
        # that closed it) that turns out to be a projection was no dark or flat of it.
        self.missing.discard(frame_index)

    def frame_refused(self, frame_index: int) -> None:
        """A frame the batch lacked came, and was refused: nothing to wait for."""
        self.missing.discard(frame_index)

    def takes(self, frame_index: int) -> bool:
        """Whether a dark or flat now here is one the batch closed without."""
        return frame_index in self.missing

    def came_too_late(self, frame_index: int) -> bool:
        return frame_index in self.given_up

    def joined(self, frame_index: int, version: int) -> None:
        """A missing frame came and the set was made again as ``version``."""
        self.missing.discard(frame_index)
        self.version = version

    def note_placed(self, key: FrameKey, version: int) -> None:
        if self.missing and version == self.version:
            self.placed.append(key)

    def due(self, bound: int) -> bool:
        """Waited for ``bound`` projections in vain."""
        return bool(self.missing) and self.arrived > bound

    def give_up(self) -> list[int]:
        """The frames still missing are taken for lost; returns them."""
        lost = sorted(self.missing)
        self.given_up |= self.missing
        self.missing.clear()
        self.placed.clear()
        return lost
