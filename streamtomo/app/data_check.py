"""``streamtomo check --data``: a scan's parameters against its recorded data, before the beamtime.

The recordings are read event by event, as ``dranspose replay`` hands them to a worker,
by a :class:`~streamtomo.workers.tomo_worker.TomoWorker` in survey mode: the worker's
own decoding, frame numbering (``frame_base``), kinds (``kind_rule``) and angles
(``encoder_field``, ``counts_per_degree``, the wrap) decide, with no correction or
backprojection, so what this says is what the scan would do. It reports the detector,
the frames by kind, the projections' angles against the scan's grid, and every frame
the scan would refuse and why; the detector's shape then goes through the checks the
reducer makes at the first frame (``check --rows --cols``).

Only one worker reads: a scan's frames are the same whichever worker gets them, and
the notices that depend on the streams' ends (``angle_stream_out_of_step``) are judged
here as the reducer judges them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from warnings import catch_warnings, simplefilter

from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.formats.pcap_checks import panda_rows, pandas_count
from streamtomo.pipeline.messages import NOMINAL_ROW, AngleRow, PandaEnded, Rejected, StreamStep
from streamtomo.pipeline.reconstruction.backends.common import AngularCoverageWarning, warn_if_incomplete
from streamtomo.pipeline.scan import ImageKey
from streamtomo.pipeline.streaming.nominal_angles import (
    WINDOW,
    NominalAngleCheck,
    another_projections_row,
    match_nominal_row,
    slot_or_none,
)
from streamtomo.pipeline.streaming.scan_end import base_off_notice
from streamtomo.pipeline.streaming.sinogram import AngleGrid, UnknownAngleError
from streamtomo.workers.tomo_worker import SurveyedFrame, TomoWorker

KIND_NAMES = {ImageKey.DARK: "darks", ImageKey.FLAT: "flats", ImageKey.PROJECTION: "projections"}


@dataclass
class DataSurvey:
    """What a scan's recordings hold, as the workers would read them."""

    events: int = 0
    frames: list[SurveyedFrame] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    first_detail: dict[str, str] = field(default_factory=dict)
    rows: dict[int, float | None] = field(default_factory=dict)  # PandA row -> angle (None: unreadable)
    steps: list[StreamStep] = field(default_factory=list)
    panda_ends: list[int] = field(default_factory=list)  # events of the PandA's capture ENDs
    refused_positions: set[int] = field(default_factory=set)  # frames refused (past the layout, say)

    def reject(self, item: Rejected) -> None:
        self.rejected[item.reason] += 1
        if item.frame_index is not None:
            self.refused_positions.add(item.frame_index)
        self.first_detail.setdefault(item.reason, item.detail)

    @property
    def shape(self) -> tuple[int, int] | None:
        """The detector's shape: that of most frames (a malformed first one does not decide)."""
        shapes = Counter(f.shape for f in self.frames if len(f.shape) == 2)
        if not shapes:
            return None
        rows, cols = shapes.most_common(1)[0][0]
        return rows, cols

    def projection_angles(self, config: PipelineConfig) -> ProjectionAngles:
        """Each projection's angle as the scan would place it: its own event's, or its
        PandA row's from another event; with ``check_nominal_angles`` one off its
        nominal slot (or that came without a row) takes the row nearby with its nominal
        angle, as the reducer's :class:`~streamtomo.pipeline.streaming.nominal_angles.NominalAngleCheck`
        does, or is refused."""
        grid = AngleGrid.of(config) if config.nominal_angles_checked() else None
        result = ProjectionAngles()
        for f in self.frames:
            if f.key != ImageKey.PROJECTION:
                continue
            angle = f.angle_deg if f.angle_row < 0 else self.rows.get(f.angle_row)
            expected = None if grid is None else NominalAngleCheck.expected_slot(config, grid, f.index)
            if grid is None or expected is None:
                result.angles.append(angle)
                continue
            # No readable row of its own: none in its event, or its joined row unreadable or never sent.
            without_row = angle is None and (f.angle_row == NOMINAL_ROW or f.angle_row >= 0)
            if not without_row and (angle is None or slot_or_none(grid, angle) == expected):
                result.angles.append(angle)
                continue
            found, matches, row = match_nominal_row(grid, expected, f.index, self.rows)
            if found is not None:
                result.matched += 1
                result.elsewhere += another_projections_row(config, f.index, row)  # as the reducer counts it
                result.angles.append(found)
                continue
            reason = "missing_angle" if without_row else "angle_mismatch"
            result.refused[reason] += 1
            measured = "no readable PandA row of its own" if without_row else f"measured {angle:.3f} deg"
            result.first_detail.setdefault(
                reason,
                f"frame {f.index}: {measured}, nominal "
                f"{config.nominal_angle(f.index - config.first_projection()):.3f} deg; {matches} PandA rows "
                f"within {WINDOW} frames have the nominal angle's slot",
            )
        return result


@dataclass
class ProjectionAngles:
    """The projections' angles as the scan would place them (:meth:`DataSurvey.projection_angles`)."""

    angles: list[float | None] = field(default_factory=list)  # None: no angle (its row missing or unreadable)
    matched: int = 0  # found their PandA row by their nominal angle (check_nominal_angles)
    elsewhere: int = 0  # of those: in another projection's event (the PandA's rows shifted)
    refused: Counter[str] = field(default_factory=Counter)  # the nominal search found none
    first_detail: dict[str, str] = field(default_factory=dict)


def _parameters(config: PipelineConfig) -> dict[Any, Any]:
    from dranspose.protocol import ParameterName, WorkParameter

    from streamtomo.app.parameter_files import parameter_list

    return {
        ParameterName(p["name"]): WorkParameter(name=ParameterName(p["name"]), data=p["data"].encode())
        for p in parameter_list(config)
    }


def survey_recordings(paths: Sequence[str | Path], config: PipelineConfig) -> DataSurvey:
    """Read every event of ``paths`` (dranspose recordings, one per stream) as a worker would."""
    from streamtomo.app.recordings import read_events  # dranspose, lazily

    return survey_events(read_events([str(p) for p in paths]), config)


def survey_events(events: Iterable[tuple[int, dict[str, Any]]], config: PipelineConfig) -> DataSurvey:
    """Read every event (number, streams), as dranspose hands them to a worker, as a worker would."""
    parameters = _parameters(config)
    worker = TomoWorker(parameters=parameters, state=SimpleNamespace(name="check"))
    survey = DataSurvey()
    worker.survey = survey.frames
    for number, streams in events:
        survey.events += 1
        result = worker.process_event(SimpleNamespace(event_number=number, streams=streams), parameters)
        for item in result.items if result is not None else ():
            if isinstance(item, Rejected):
                survey.reject(item)
            elif isinstance(item, AngleRow):
                survey.rows[item.row] = item.angle_deg
            elif isinstance(item, StreamStep):
                survey.steps.append(item)
            elif isinstance(item, PandaEnded):
                survey.panda_ends.append(item.event)
    return survey


@dataclass
class AngleReport:
    """Projections' angles against the scan's grid."""

    measured: int
    low: float
    high: float
    outside: int  # match no slot (the scan rejects them: unknown_angle)
    without: int  # no angle (their row missing or unreadable)
    empty_slots: int
    shared_slots: int  # slots two or more projections fall in (averaged)
    grid: str
    first_outside: str = ""  # why the first of ``outside`` matches no slot
    coverage: str = ""  # the wedge of the half turn the slots leave out (limited_angle_coverage)


def angle_report(angles: Sequence[float | None], config: PipelineConfig) -> AngleReport | None:
    known = [a for a in angles if a is not None]
    if not angles:
        return None
    grid = AngleGrid.of(config)
    per_slot: Counter[int] = Counter()
    outside = 0
    first_outside = ""
    for angle in known:
        try:
            per_slot[grid.slot(angle)] += 1
        except UnknownAngleError as error:
            outside += 1
            first_outside = first_outside or str(error)
    return AngleReport(
        measured=len(known),
        low=min(known) if known else float("nan"),
        high=max(known) if known else float("nan"),
        outside=outside,
        without=len(angles) - len(known),
        empty_slots=grid.n - len(per_slot),
        shared_slots=sum(1 for n in per_slot.values() if n > 1),
        grid=grid.describe(),
        first_outside=first_outside,
        coverage=_coverage([grid.start + grid.step * slot for slot in per_slot]) if per_slot else "",
    )


def _coverage(slot_angles: list[float]) -> str:
    """What the scan would say of these filled slots' angles at its end
    (``limited_angle_coverage``), '' where they cover the half turn: angles in radians
    read as degrees (3.1 of 180) and a stage that never turned passed the check."""
    with catch_warnings(record=True) as caught:
        simplefilter("always", AngularCoverageWarning)
        warn_if_incomplete(slot_angles)
    return next((str(w.message) for w in caught if issubclass(w.category, AngularCoverageWarning)), "")


def describe(survey: DataSurvey, config: PipelineConfig, projections: ProjectionAngles) -> tuple[list[str], list[str]]:
    """What the data hold (lines for stdout) and what the scan would refuse or doubt
    (lines for stderr); ``projections``: ``survey.projection_angles(config)``."""
    out: list[str] = []
    warnings: list[str] = []
    shape = survey.shape
    kinds = Counter(f.key for f in survey.frames)
    dtypes = sorted({f.dtype for f in survey.frames})
    detector = f"{shape[0]} x {shape[1]} {'/'.join(dtypes)}" if shape else "no image"
    counts = ", ".join(f"{kinds[k]} {name}" for k, name in KIND_NAMES.items())
    out.append(f"data: {survey.events} events; detector {detector}; {counts} (kind_rule {config.kind_rule})")
    angles = angle_report(projections.angles, config)
    if angles is not None:
        if angles.measured:
            out.append(
                f"angles: {angles.measured} projections from {angles.low:.3f} to {angles.high:.3f} deg against "
                f"{angles.grid}: {angles.empty_slots} slots empty, {angles.shared_slots} shared"
            )
        if angles.coverage:
            warnings.append(f"limited_angle_coverage: {angles.coverage}")
        if angles.outside:
            warnings.append(
                f"{angles.outside} projections have an angle that matches no slot (unknown_angle; the first: "
                f"{angles.first_outside})"
            )
        if angles.without:
            warnings.append(f"{angles.without} projections have no angle (their PandA row is missing or unreadable)")
    if projections.matched:
        out.append(
            f"check_nominal_angles: {projections.matched} projections found their PandA row by their nominal angle "
            "(their event's row was another frame's, or none)"
        )
    for reason, n in sorted(projections.refused.items()):
        warnings.append(f"{n} x {reason}: {projections.first_detail[reason]}")
    for reason, n in sorted(survey.rejected.items()):
        warnings.append(f"{n} x {reason}: {survey.first_detail[reason]}")
    # The PandA's count and the frame base, judged as the reducer judges them at the end.
    positions = survey.refused_positions | {f.index for f in survey.frames}
    expected = config.expected_frames()
    rows = panda_rows(survey.panda_ends, survey.rows.keys())
    base_off = (
        ""
        if survey.rejected.get("frame_base_suspect")
        else base_off_notice(expected, positions, config.fixed_frame_base(), config.angle_stream, rows)
    )
    if base_off:
        warnings.append(f"frame_base_suspect: {base_off}")
    base_doubted = bool(base_off or survey.rejected.get("frame_base_suspect"))
    last_row_event = max(survey.rows) + 1 if survey.rows else None
    count = None if base_doubted else pandas_count(survey.panda_ends, last_row_event, expected, positions)
    in_step = count is not None and count.fits_came and config.nominal_angles_checked() and not projections.elsewhere
    if count is not None and count.surplus and not in_step:
        warnings.append(
            f"{count.describe()}: projections after the first such message sit at a neighbour's angle "
            "(angle_stream_out_of_step"
            + ("; check_nominal_angles looks for their rows)" if config.nominal_angles_checked() else ")")
        )
    elif projections.elsewhere:  # shifts that cancel leave the count as it was
        warnings.append(
            f"check_nominal_angles found the PandA rows of {projections.elsewhere} projections in other events "
            "than their own: the PandA's rows went out of step with the frames (angle_stream_out_of_step)"
        )
    elif survey.steps and count is None and not base_doubted:
        warnings.append(
            "the detector's and the PandA's streams end in different events ("
            + "; ".join(f"event {s.event}: {s.detail}" for s in survey.steps[:2])
            + "): unless the detector lost or gained messages, projections may sit at a neighbour's angle"
        )
    return out, warnings


def usable_projections(projections: ProjectionAngles, config: PipelineConfig) -> int:
    """Projections the scan would place: read, with an angle on the grid."""
    report = angle_report(projections.angles, config)
    if report is None or not config.angle_stream:
        return len(projections.angles)
    return report.measured - report.outside
