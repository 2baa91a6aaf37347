"""Which frames arrived, which were refused and why: the reducer's counters.

Every frame is counted once: as used (a dark, flat or projection) or under the one
reason it was rejected for. The first rejection of each reason is logged at
WARNING, the rest are counted (``/entry/status/rejected``), so a bad stream does not
flood the log and a reader still sees every loss.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

logger = logging.getLogger(__name__)


class FrameAdmission:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.seen: set[int] = set()  # frame indices that arrived (used or rejected)
        self.admitted: dict[int, int] = {}  # frame index -> the event of the copy in use
        self._digests: dict[int, int] = {}  # frame index -> the digest of the copy in use (if known)
        # (frame index, first event, second event) of frame numbers the detector repeated
        # on another exposure: later frames may carry numbers off by one.
        self.repeated_numbers: list[tuple[int, int, int]] = []
        self._rejected_frames: set[int] = set()
        # Frames whose copy in use (counted as received) was rejected later on.
        self._rejected_in_use: set[int] = set()
        self._logged_reasons: set[str] = set()
        # The first rejection's detail per reason: a scan that reduced nothing names its
        # cause with it (a worker refusing every frame for rows that do not fit said
        # only "3201 scan_refused" in the reason, the file and the last line).
        self.first_detail: dict[str, str] = {}
        # (frame, event) of copies refused as duplicates or repeated numbers: counted once.
        self._refused_copies: set[tuple[int, int]] = set()
        # Reasons counted in ``rejected`` that are no frame's (a PandA header mid-capture,
        # streams out of step): shown with the rest, left out of the frames rejected.
        self.notice_reasons: set[str] = set()

    def reject(self, reason: str, detail: str, frame_index: int | None = None, *, counted: bool = False) -> None:
        """Count a rejected frame; log the first of each reason at WARNING.

        ``counted``: the frame was already counted as received (it is rejected later
        on), so it is not counted as a second arrival. A frame is rejected once, for
        its first reason: its arrivals once (broadcast copies that each worker
        refuses), and its copy in use once. The copy in use is rejected however its
        other copies fared: one refused before it left the frame in no count.
        """
        if counted and frame_index is not None:
            if frame_index in self._rejected_in_use:
                return
            self._rejected_in_use.add(frame_index)
        elif frame_index is not None and frame_index in self._rejected_frames:
            return  # one frame, one reason: the first
        self.rejected[reason] += 1
        if not counted:
            self.counts["rejected_arrivals"] += 1
        if frame_index is not None:
            self.seen.add(frame_index)
            self._rejected_frames.add(frame_index)
        self.first_detail.setdefault(reason, detail)
        if reason not in self._logged_reasons:
            self._logged_reasons.add(reason)
            logger.warning("rejected (%s): %s; further ones are counted in /entry/status", reason, detail)
        else:
            logger.debug("rejected (%s): %s", reason, detail)

    def notice(self, reason: str, detail: str) -> None:
        """Count something the streams showed that is no frame's rejection (logged at
        WARNING the first time, as a rejection's reason)."""
        self.notice_reasons.add(reason)
        self.rejected[reason] += 1
        if reason not in self._logged_reasons:
            self._logged_reasons.add(reason)
            logger.warning("%s: %s; further ones are counted in /entry/status", reason, detail)
        else:
            logger.debug("%s: %s", reason, detail)

    @property
    def notices(self) -> dict[str, int]:
        """The counts of :attr:`rejected` that are no frame's: what the streams showed."""
        return {reason: n for reason, n in self.rejected.items() if reason in self.notice_reasons}

    @property
    def frames_rejected(self) -> int:
        return sum(self.rejected.values()) - sum(self.notices.values())

    def first_time(self, frame_index: int, event: int = -1, digest: int = 0) -> bool:
        """Admit a frame index once; a second copy from another event is a counted
        duplicate (the first is kept). A copy that was rejected (malformed, say) does
        not take a good frame's place: only admitted copies make duplicates.

        ``digest`` (:func:`~streamtomo.pipeline.messages.frame_digest`): a second copy
        with other pixels is no copy but another exposure under the same number (the
        detector's counter repeated it): ``frame_number_repeated``, and the number's
        frames after it may sit one position off (:attr:`repeated_numbers`)."""
        if frame_index in self.admitted:
            first = self.admitted[frame_index]
            if event >= 0 and (frame_index, event) in self._refused_copies:
                # The refused copy again, from another worker: an event sent to every
                # worker (the darks' and flats', the end) counted one extra message
                # once per worker.
                return False
            if event >= 0:
                self._refused_copies.add((frame_index, event))
            kept = self._digests.get(frame_index, 0)
            if digest and kept and digest != kept:
                self.repeated_numbers.append((frame_index, first, event))
                self.reject(
                    "frame_number_repeated",
                    f"frame {frame_index} arrived twice with other pixels (events {first} and {event}): the "
                    "detector's counter repeated the number on another exposure; the first is kept",
                )
                return False
            self.reject(
                "duplicate_frame",
                f"frame {frame_index} arrived twice (events {first} and {event}); the first is kept",
            )
            return False
        self.seen.add(frame_index)
        self.admitted[frame_index] = event
        if digest:
            self._digests[frame_index] = digest
        if frame_index in self._rejected_frames:
            # The bad copy stays counted under its reason; this copy can still be
            # rejected for its own (an angle, say), so the index is free again.
            self._rejected_frames.discard(frame_index)
            self.counts["good_copy_after_rejected"] += 1
        return True

    def is_copy(self, frame_index: int, event: int) -> bool:
        """The admitted copy itself again: a broadcast reaches every worker (same event)."""
        return event >= 0 and self.admitted.get(frame_index) == event

    def accept(self, kind: str) -> None:
        self.counts["frames"] += 1
        self.counts[kind] += 1

    @property
    def received(self) -> int:
        return self.counts["frames"] + self.counts["rejected_arrivals"]

    def lost_ranges(self, expected: int) -> list[tuple[int, int]]:
        """Frame index ranges (inclusive) below ``expected`` that never arrived."""
        return index_ranges(index for index in range(expected) if index not in self.seen)


def index_ranges(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted frame indices as inclusive ranges: 3, 4, 5, 9 -> (3, 5), (9, 9)."""
    ranges: list[tuple[int, int]] = []
    for index in indices:
        if ranges and ranges[-1][1] == index - 1:
            ranges[-1] = (ranges[-1][0], index)
        else:
            ranges.append((index, index))
    return ranges


def ranges_text(ranges: list[tuple[int, int]], shown: int = 4) -> str:
    """'10-19, 30' for people: the first ``shown`` ranges, the rest counted."""
    text = ", ".join(f"{first}-{last}" if last > first else str(first) for first, last in ranges[:shown])
    more = len(ranges) - shown
    return f"{text} and {more} ranges more" if more > 0 else text


LOST_RANGES_SHOWN = 4  # ranges of lost frames a line names; the rest are counted


def describe_lost(ranges: list[tuple[int, int]], base_doubted: bool = False) -> str:
    """'N frames lost (never reached the reducer: 10-19, 30)', '' when none: a scan that finished
    without a third of its frames read like a whole one where only the count said so.

    ``base_doubted``: the scan noticed ``frame_base_suspect``. Its leading empty
    positions (from 0) may be no loss but the numbering's offset (frame_base 0 for a
    detector that counts from 1 leaves position 0 empty, every frame sent), and "never
    reached the reducer" blamed the network or a worker for frames that were all there.
    A gap after the first frame is no offset's: it is said as lost."""
    doubtful = ranges[:1] if base_doubted and ranges and ranges[0][0] == 0 else []
    lost_ranges = ranges[len(doubtful) :]
    said = []
    if doubtful:
        n = sum(last - first + 1 for first, last in doubtful)
        said.append(
            f"{n} frame position{'s' if n != 1 else ''} never filled ({ranges_text(doubtful, LOST_RANGES_SHOWN)}): "
            "lost, or the frames are numbered from another frame_base (see frame_base_suspect)"
        )
    lost = sum(last - first + 1 for first, last in lost_ranges)
    if lost:
        said.append(
            f"{lost} frame{'s' if lost != 1 else ''} lost (never reached the reducer: "
            f"{ranges_text(lost_ranges, LOST_RANGES_SHOWN)})"
        )
    return "; ".join(said)
