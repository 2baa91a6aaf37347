"""Which kind (dark, flat, projection) a streamed frame is.

Detector streams rarely say: the MAX IV receiver sends bare images. So the kind comes
either from a key a source put in the image header (``image_key``, NXtomo numbers or
names) or from the frame's position in a scan of known layout, e.g. 10 darks, 10 flats,
then projections. Recording readers and workers share this rule so they agree.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamtomo.pipeline.formats.errors import FrameError
from streamtomo.pipeline.scan import ImageKey, image_key_from_name

if TYPE_CHECKING:
    from streamtomo.pipeline.config import PipelineConfig

logger = logging.getLogger(__name__)

Segment = tuple[ImageKey, int | None]  # (kind, count); None: all remaining frames


@dataclass(frozen=True)
class FrameKindRule:
    """Header key first (when set and present), else position in ``segments``.

    ``segments`` lists the scan in order; only the last may be open-ended (``None``).
    No segments means every frame is a projection. Positions past a closed layout are
    :attr:`ImageKey.INVALID` (extra frames, not an error: streams do overrun).
    ``position`` is the frame's 0-based position in the scan: the STINS ``frame``
    field less the scan's first frame number (:class:`FrameNumbering`).
    """

    segments: tuple[Segment, ...] = ()
    header_key: str | None = "image_key"
    require_header: bool = False

    def __post_init__(self) -> None:
        for i, (kind, count) in enumerate(self.segments):
            if count is None and i != len(self.segments) - 1:
                raise ValueError("only the last segment may be open-ended ('*')")
            if count is not None and count < 0:
                raise ValueError(f"segment {kind.name.lower()} has negative count {count}")
        if self.require_header and self.header_key is None:
            raise ValueError("require_header needs a header_key")

    @classmethod
    def from_counts(
        cls,
        n_darks: int = 0,
        n_flats: int = 0,
        n_projections: int | None = None,
        n_flats_after: int = 0,
        n_darks_after: int = 0,
        header_key: str | None = None,
    ) -> FrameKindRule:
        """Darks, flats, projections, flats, darks (the common order); header ignored."""
        if n_projections is None and (n_flats_after or n_darks_after):
            raise ValueError("frames after the projections need n_projections")
        segs: list[Segment] = [
            (ImageKey.DARK, n_darks),
            (ImageKey.FLAT, n_flats),
            (ImageKey.PROJECTION, n_projections),
            (ImageKey.FLAT, n_flats_after),
            (ImageKey.DARK, n_darks_after),
        ]
        return cls(tuple(s for s in segs if s[1] != 0), header_key=header_key)

    @classmethod
    def from_config(cls, config: PipelineConfig) -> FrameKindRule:
        """The rule a scan's configuration sets: ``kind_rule`` ``header`` (the key is
        required in every image header) or ``counts`` (position only)."""
        if config.kind_rule == "header":
            return cls(header_key=config.kind_header_key, require_header=True)
        # frame_layout or the n_* counts, checked by the configuration.
        return cls(config.frame_segments(), header_key=None)

    @classmethod
    def from_spec(cls, spec: str, header_key: str | None = None) -> FrameKindRule:
        """Parse ``"dark:10,flat:10,projection:*"`` (kinds as in ``image_key_from_name``)."""
        segs: list[Segment] = []
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, sep, count = item.partition(":")
            if not sep:
                raise ValueError(f"segment {item!r} must be 'kind:count' or 'kind:*'")
            try:
                n = None if count.strip() == "*" else int(count)
            except ValueError:
                raise ValueError(f"segment {item!r}: count must be an integer or '*'") from None
            segs.append((image_key_from_name(name), n))
        return cls(tuple(segs), header_key=header_key)

    def by_position(self, position: int) -> ImageKey:
        if position < 0:
            raise ValueError(f"frame position must be >= 0, got {position}")
        if not self.segments:
            return ImageKey.PROJECTION
        start = 0
        for kind, count in self.segments:
            if count is None or position < start + count:
                return kind
            start += count
        return ImageKey.INVALID

    def past_layout(self, position: int, header: Mapping[str, Any] | None = None) -> int | None:
        """The closed layout's number of frames when the frame at ``position`` lies past
        it (and its header does not name its kind); else None."""
        if self.header_key is not None and header is not None and self.header_key in header:
            return None
        if not self.segments or any(count is None for _, count in self.segments):
            return None
        size = sum(count or 0 for _, count in self.segments)
        return size if position >= size else None

    def kind(self, position: int, header: Mapping[str, Any] | None = None) -> ImageKey:
        """The frame's kind from its image header (``StinsImage.extra``) or position."""
        if self.header_key is not None and header is not None and self.header_key in header:
            value = header[self.header_key]
            try:
                return image_key_from_name(value)
            except (TypeError, ValueError) as exc:
                raise FrameError(f"frame {position}: bad {self.header_key!r}: {exc}") from None
        if self.require_header:
            raise FrameError(f"frame {position} has no {self.header_key!r} in its header")
        return self.by_position(position)


class BaseEvidence:
    """What a process knows of an 'auto' series' frame base: the candidate
    ``frame - (event - 1)`` of the image with the lowest event number seen so far.

    Every message a stream drops or gains before an image shifts its candidate by one,
    so the earliest image is the best witness, and event 1 (the first image) is exact.
    The workers of one process share one (all of them in ``replay``, which hands
    events to its workers in order, so the first image settles it for all): a worker
    whose own first image came after a lost message takes the base from it too.
    """

    def __init__(self) -> None:
        self.base: int | None = None
        self.event: int | None = None
        # The earliest event whose detector message could not be read: before the
        # witness, it was a damaged image (the candidate holds) or an extra message
        # (the base is one more), and the stream cannot say which.
        self.unreadable: int | None = None

    def offer(self, frame: int, event_number: int | None) -> None:
        event = event_number if event_number is not None and event_number >= 1 else 1
        if self.event is not None and event >= self.event:
            return
        # A detector counter never starts below 0: more events than frames before this
        # one (a mapping with extra events) must not make positions up.
        base = max(frame - (event - 1), 0)
        if base != self.base:
            logger.info("frame numbers start at %d (frame %d in event %s)", base, frame, event_number)
        self.base, self.event = base, event

    def offer_unreadable(self, event_number: int | None) -> None:
        """A detector message of ``event_number`` could not be read."""
        if (
            event_number is not None
            and event_number >= 1
            and (self.unreadable is None or event_number < self.unreadable)
        ):
            self.unreadable = event_number

    def reset(self) -> None:
        self.base = self.event = self.unreadable = None


class FrameNumbering:
    """Detector frame numbers to 0-based positions in the scan: ``frame - base``.

    Detectors number their frames from 0 (dranspose's own recordings) or from 1
    (the Orca at MAX IV DanMAX); kinds by position and nominal angles need the
    position. A fixed ``base`` is taken as given. With ``base`` None ('auto') the base
    is ``frame - (event_number - 1)`` of the earliest image known (:class:`BaseEvidence`):
    dranspose numbers a scan's events from 0 and the detector's header is event 0, so
    the image of event ``e`` is the scan's frame ``e - 1``. In distributed mode the
    first darks and flats are broadcast, so every worker sees event 1; a scan that
    starts with projections and loses a message before a worker's first image can
    shift that worker's base: a fixed ``frame_base`` is the remedy there.
    """

    def __init__(self, base: int | None = None, evidence: BaseEvidence | None = None) -> None:
        self.fixed = base
        self.evidence = evidence if evidence is not None else BaseEvidence()
        self._said: int | None = None  # the 'auto' base suspect_base last spoke of

    def suspect_base(self) -> str:
        """Why an 'auto' base is suspect, once per base ('' if it is not): detectors
        number from 0 (dranspose's recordings) or 1 (the Orca at DanMAX), so a first
        frame numbered 2 or more means images before it were lost or malformed (a
        dropped first Orca image gave base 2: every frame one position off, darks taken
        for flats and flats for projections, and nothing said so); and a base of 0 is
        suspect when a detector message before its witness could not be read."""
        evidence = self.evidence
        base = evidence.base
        if self.fixed is not None or base is None or base == self._said:
            return ""
        witness = f"frame {base + (evidence.event or 1) - 1} in event {evidence.event}"
        if base not in (0, 1):
            self._said = base
            return (
                f"frame_base 'auto' took {base} as the scan's first frame number ({witness}), but detectors count "
                "from 0 or 1: images before it were probably lost or malformed and every frame may be off by one or "
                "more positions (its kind, its angle). Set frame_base (1 for the Orca at DanMAX) and replay the scan"
            )
        unreadable_before = (
            evidence.unreadable is not None and evidence.event is not None and evidence.unreadable < evidence.event
        )
        if base == 0 and unreadable_before:
            # An extra message before the first image (one a detector or a network
            # added, unreadable) made a detector that counts from 1 look like one
            # that counts from 0: every frame one position off, and a scan whose
            # last frame was lost too showed no other sign (fuzz_streams.py
            # --frame-base auto --seed 21, round 351).
            self._said = base
            return (
                f"frame_base 'auto' took 0 as the scan's first frame number ({witness}), but the detector's "
                f"message in event {evidence.unreadable} before it could not be read: if it was an extra message "
                "and not an image, the detector counts from 1 and every frame is one position off (its kind, its "
                "angle). Set frame_base (1 for the Orca at DanMAX) and replay the scan"
            )
        return ""

    @property
    def base(self) -> int | None:
        return self.fixed if self.fixed is not None else self.evidence.base

    def reset(self) -> None:
        """A new series: 'auto' looks again."""
        self.evidence.reset()

    def position(self, frame: int, event_number: int | None) -> int:
        """The frame's 0-based position; negative when it lies before the base."""
        if self.fixed is not None:
            return frame - self.fixed
        self.evidence.offer(frame, event_number)
        assert self.evidence.base is not None
        return frame - self.evidence.base
