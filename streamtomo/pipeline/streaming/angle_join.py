"""Frames joined to their own PandA row, whatever event each arrived in.

dranspose puts detector message n and PandA message n into event n. When one stream
drops or gains a message, every later event pairs a frame with another frame's
angle. The identities the beamline sends say which belong together: the detector
frame's position in the scan (its frame number less the base) and the PandA row's
position in its capture (its event number less one: the PandA header is event 0, and
the PandA's TCP stream loses nothing). A worker whose frame and row disagree sends
the frame without an angle, naming the row it needs (``ProjectionRows.angle_row``);
every worker sends each PandA row it read (``AngleRow``). Here the two meet.
"""

from __future__ import annotations

import dataclasses
import logging

from streamtomo.pipeline.messages import AngleRow, ProjectionRows, with_own_rows

logger = logging.getLogger(__name__)


class AngleJoin:
    def __init__(self) -> None:
        self.rows: dict[int, AngleRow] = {}
        self._waiting: dict[int, list[ProjectionRows]] = {}
        # The frames (position, event) that took the angle of a row from another event,
        # by number or by the nominal search: a set, as a frame joined by number may then
        # be matched by angle too (it was counted twice, at times once per lookup).
        self.joined_frames: set[tuple[int, int]] = set()
        self._logged = False

    def add_row(self, row: AngleRow) -> list[tuple[ProjectionRows, AngleRow]]:
        """Remember a PandA row; returns the frames that waited for it, with it."""
        self.rows.setdefault(row.row, row)
        waiting = self._waiting.pop(row.row, [])
        return [(msg, row) for msg in waiting]

    def defer(self, msg: ProjectionRows) -> tuple[ProjectionRows, AngleRow] | None:
        """A frame whose event carried another row; returns it with its row if that is here."""
        if not self._logged:
            self._logged = True
            apart = msg.frame_index - (msg.event - 1)
            logger.warning(
                "detector frame %d arrived in event %d, which carries PandA row %d: the detector stream is %d "
                "message(s) %s the PandA stream (a message dropped or added on one of them); frames are joined "
                "to their own PandA row (counted in /entry/status/angles_joined)",
                msg.frame_index,
                msg.event,
                msg.event - 1,
                abs(apart),
                "ahead of" if apart > 0 else "behind",
            )
        row = self.rows.get(msg.angle_row)
        if row is not None:
            return msg, row
        self._waiting.setdefault(msg.angle_row, []).append(with_own_rows(msg))
        return None

    @staticmethod
    def with_angle(msg: ProjectionRows, row: AngleRow) -> ProjectionRows:
        assert row.angle_deg is not None
        return dataclasses.replace(msg, angle_deg=row.angle_deg, angle_row=-1)

    def take_unjoined(self) -> list[ProjectionRows]:
        """Frames whose PandA row never came (the scan is over)."""
        waiting = [msg for msgs in self._waiting.values() for msg in msgs]
        self._waiting = {}
        return waiting

    @property
    def joined(self) -> int:
        """Frames placed with the angle of a row from another event."""
        return len(self.joined_frames)

    def waiting_positions(self) -> set[int]:
        """The positions of the frames that wait for their row: they came."""
        return {msg.frame_index for msgs in self._waiting.values() for msg in msgs}

    @property
    def pending(self) -> int:
        return sum(len(msgs) for msgs in self._waiting.values())
