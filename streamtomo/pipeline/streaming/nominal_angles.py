"""Measured angles checked against the frame's nominal angle (``check_nominal_angles``).

A PandA that records one trigger too many (or a detector that misses one) shifts every
later frame onto its neighbour's angle, and no identity in the streams shows it: the
PandA's rows carry no frame number. Where the scan's order is known (projection i at
``angle_start + i * step``), the measured angle must fall in the frame's own slot. A
frame that does not is held until the PandA rows around it are here, then matched to
the one row within ``WINDOW`` frames whose angle is its own, or rejected.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.correction.references import ReferenceSet
from streamtomo.pipeline.messages import NOMINAL_ROW, AngleRow, ProjectionRows, with_own_rows
from streamtomo.pipeline.streaming.sinogram import AngleGrid, UnknownAngleError

logger = logging.getLogger(__name__)

WINDOW = 2  # PandA rows searched on each side of the frame's own
# Rows whose angles differ by at most this fraction of the grid's step read one
# position of the stage: as a match they are one, not an ambiguity.
SAME_ANGLE = 0.01


@dataclass(frozen=True)
class Verdict:
    msg: ProjectionRows
    refs: ReferenceSet
    angle_deg: float | None  # the matching row's angle; None: no row matches
    detail: str
    row: int = -1  # the matching row (the nearest to the frame's own of those at its angle)


class NominalAngleCheck:
    def __init__(self) -> None:
        self._pending: list[tuple[ProjectionRows, ReferenceSet]] = []
        self._logged = False

    @staticmethod
    def expected_slot(config: PipelineConfig, grid: AngleGrid, frame_index: int) -> int | None:
        """The slot of the frame's nominal angle; None where the check does not apply."""
        if not config.nominal_angles_checked() or not _is_projection(config, frame_index):
            return None
        return slot_or_none(grid, config.nominal_angle(frame_index - config.first_projection()))

    def hold(self, msg: ProjectionRows, refs: ReferenceSet, slot: int | None, expected: int) -> None:
        """Keep a frame until its neighbours' rows are here. ``slot`` None: it came
        without an angle (no readable PandA row of its own: :data:`NOMINAL_ROW`)."""
        if not self._logged:
            self._logged = True
            measured = "came without a PandA row" if slot is None else f"measured {msg.angle_deg:.3f} deg (slot {slot})"
            logger.warning(
                "frame %d %s, its nominal angle is in slot %d: looking for its PandA row "
                "among the %d rows around it (check_nominal_angles)",
                msg.frame_index,
                measured,
                expected,
                2 * WINDOW,
            )
        self._pending.append((with_own_rows(msg), refs))

    def resolve(
        self, config: PipelineConfig, grid: AngleGrid, rows: dict[int, AngleRow], finishing: bool
    ) -> list[Verdict]:
        """Verdicts for the held frames whose neighbouring rows are all here (all at the end)."""
        verdicts: list[Verdict] = []
        still: list[tuple[ProjectionRows, ReferenceSet]] = []
        for msg, refs in self._pending:
            window = range(max(msg.frame_index - WINDOW, 0), msg.frame_index + WINDOW + 1)
            if not finishing and any(r not in rows for r in window):
                still.append((msg, refs))
                continue
            expected = self.expected_slot(config, grid, msg.frame_index)
            angles = {r: rows[r].angle_deg for r in window if r in rows}
            found, matches, row = match_nominal_row(grid, expected, msg.frame_index, angles)
            if found is not None:
                verdicts.append(Verdict(msg, refs, found, "", row))
            else:
                nominal = config.nominal_angle(msg.frame_index - config.first_projection())
                measured = (
                    "no readable PandA row of its own"
                    if msg.angle_row == NOMINAL_ROW
                    else f"measured {msg.angle_deg:.3f} deg"
                )
                detail = (
                    f"frame {msg.frame_index}: {measured}, nominal {nominal:.3f} deg; "
                    f"{matches} PandA rows within {WINDOW} frames have the nominal angle's slot"
                )
                verdicts.append(Verdict(msg, refs, None, detail))
        self._pending = still
        return verdicts

    @property
    def pending(self) -> int:
        return len(self._pending)


def match_nominal_row(
    grid: AngleGrid, expected: int | None, frame_index: int, angles: Mapping[int, float | None]
) -> tuple[float | None, int, int]:
    """The angle of the PandA row within :data:`WINDOW` rows of ``frame_index`` whose
    angle falls in the ``expected`` slot, how many rows do (``angles``: row -> angle,
    None where unreadable), and which row it is (-1: none). None unless exactly one
    position matches: several rows at one angle are one angle, the stage held still
    (darks and flats taken at the first projection's angle), and the row nearest the
    frame's own is taken."""
    if expected is None:
        return None, 0, -1
    matches = [
        (abs(r - frame_index), r, angle)
        for r in range(max(frame_index - WINDOW, 0), frame_index + WINDOW + 1)
        if (angle := angles.get(r)) is not None and slot_or_none(grid, angle) == expected
    ]
    if not matches:
        return None, 0, -1
    values = [angle for _, _, angle in matches]
    if len(matches) > 1 and max(values) - min(values) > SAME_ANGLE * grid.step:
        return None, len(matches), -1
    _, row, angle = min(matches)
    return angle, len(matches), row


def another_projections_row(config: PipelineConfig, frame_index: int, row: int) -> bool:
    """Whether the row the search matched is another projection's: the PandA's rows sat
    beside other frames (a reference's row at the same stage position is no such sign)."""
    return row != frame_index and _is_projection(config, row)


def _is_projection(config: PipelineConfig, position: int) -> bool:
    return 0 <= position - config.first_projection() < config.n_projections


def slot_or_none(grid: AngleGrid, angle_deg: float) -> int | None:
    """The angle's slot; None where it matches none."""
    try:
        return grid.slot(angle_deg)
    except UnknownAngleError:
        return None
