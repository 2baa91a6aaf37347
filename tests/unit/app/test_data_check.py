"""``check --data`` reads the data as the scan would: with ``check_nominal_angles`` its
projections find their PandA rows by their nominal angles as the reducer's do."""

from __future__ import annotations

import numpy as np
import pytest

from streamtomo.app.data_check import describe, survey_events, usable_projections
from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.formats import pcap
from tests.support.stream_events import events_by_stream
from tests.unit.workers.test_beamline_conventions import DANMAX_FIELDS, danmax_config, danmax_scan, run_scan
from tests.unit.workers.test_stream_alignment import ANGLES, FIRST, config, split


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        ("header", {}),  # a re-armed capture's header on top of the rows: every row found nearby
        ("3 rows", {"angle_mismatch": len(ANGLES) - 11}),  # 3 rows too many: projections 11 on beyond the search
    ],
)
def test_check_finds_each_projections_row_as_the_scan_does(extra: str, refused: dict[str, int]) -> None:
    detector, angle = split(danmax_scan(ANGLES))
    at = FIRST + 10
    angle[at:at] = [angle[0]] if extra == "header" else [angle[at]] * 3
    values = {**config(), "check_nominal_angles": "true"}
    events = events_by_stream(detector, angle)
    cfg = PipelineConfig.from_mapping(values)
    survey = survey_events(((int(e.event_number), e.streams) for e in events), cfg)
    projections = survey.projection_angles(cfg)

    scan = run_scan(events, values, 2)
    assert scan.sinogram is not None
    placed = scan.sinogram.angles()[scan.sinogram.filled_slots()]
    assert dict(projections.refused) == {k: v for k, v in scan.rejected.items() if k in ("angle_mismatch",)} == refused
    np.testing.assert_allclose(sorted(a for a in projections.angles if a is not None), sorted(placed), atol=1e-3)
    assert usable_projections(projections, cfg) == len(placed)
    lines, warnings = describe(survey, cfg, projections)
    empty = len(ANGLES) - len(placed)
    assert any(f"{len(placed)} projections from" in line and f"{empty} slots empty" in line for line in lines)
    if not refused:
        assert projections.matched > 0 and any("found their PandA row by their nominal angle" in line for line in lines)
    else:
        assert any(line.startswith(f"{refused['angle_mismatch']} x angle_mismatch: frame ") for line in warnings)


def test_without_nominal_checks_the_survey_takes_the_rows_as_they_come() -> None:
    detector, angle = split(danmax_scan(ANGLES))
    angle[FIRST + 10 : FIRST + 10] = [pcap.encode_pcap_header(DANMAX_FIELDS, "2024-11-05T10:00:01.000Z")]
    cfg = PipelineConfig.from_mapping(config())
    events = events_by_stream(detector, angle)
    projections = survey_events(((int(e.event_number), e.streams) for e in events), cfg).projection_angles(cfg)
    assert projections.matched == 0 and not projections.refused
    assert sum(a is None for a in projections.angles) == 0  # the header's frame is refused by the worker
    assert len(projections.angles) == len(ANGLES) - 1


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("double trigger, detector message dropped", "the PandA sent 1 message(s) more than the scan's"),
        ("junk detector message", None),  # the detector's own extra: no shift
    ],
)
def test_check_judges_the_pandas_count_as_the_scan_does(damage: str, says: str | None) -> None:
    detector, angle = split(danmax_scan(ANGLES))
    if damage.startswith("junk"):
        detector.insert(FIRST + 5, [b"\xff junk"])
    else:
        del detector[FIRST + 5]
        angle.insert(FIRST + 21, angle[FIRST + 20])
    events = events_by_stream(detector, angle)
    cfg = PipelineConfig.from_mapping(config())
    survey = survey_events(((int(e.event_number), e.streams) for e in events), cfg)
    _, warnings = describe(survey, cfg, survey.projection_angles(cfg))
    scan = run_scan(events, config(), 2)
    if says is None:
        assert not [w for w in warnings if "PandA" in w] and "angle_stream_out_of_step" not in scan.rejected
    else:
        assert any(w.startswith(says) for w in warnings) and scan.rejected["angle_stream_out_of_step"] == 1


def test_check_blames_neither_the_panda_for_a_short_scan_nor_it_for_a_low_base() -> None:
    cfg = PipelineConfig.from_mapping(config())
    short = danmax_scan(ANGLES[:40])  # stopped after 40 of the layout's 45 projections
    survey = survey_events(((int(e.event_number), e.streams) for e in short), cfg)
    # Only what the scan itself says at its end: 160 of 180 degrees.
    said = describe(survey, cfg, survey.projection_angles(cfg))[1]
    assert [w.split(":")[0] for w in said] == ["limited_angle_coverage"], said
    assert "limited_angle_coverage" in run_scan(short, config(), 1).notices
    low = PipelineConfig.from_mapping({**config(), "frame_base": "0"})  # the Orca counts from 1
    full = danmax_scan(ANGLES)
    survey = survey_events(((int(e.event_number), e.streams) for e in full), low)
    warnings = describe(survey, low, survey.projection_angles(low))[1]
    assert any(w.startswith("frame_base_suspect:") and "Set frame_base 1" in w for w in warnings)
    assert not [w for w in warnings if "the PandA sent" in w]


def test_check_counts_shifts_that_cancel_as_the_scan_does() -> None:
    detector, angle = split(danmax_scan(ANGLES))
    del angle[FIRST + 30]
    angle.insert(FIRST + 11, angle[FIRST + 10])
    values = {**config(), "check_nominal_angles": True}
    events = events_by_stream(detector, angle)
    cfg = PipelineConfig.from_mapping(values)
    survey = survey_events(((int(e.event_number), e.streams) for e in events), cfg)
    warnings = describe(survey, cfg, survey.projection_angles(cfg))[1]
    assert any("in other events than their own" in w for w in warnings)
    assert run_scan(events, values, 2).rejected["angle_stream_out_of_step"] == 1


def test_check_says_when_the_angles_cover_a_wedge_of_the_half_turn() -> None:
    """Angles in radians read as degrees (a grid fitted to them, as config --nexus
    makes one): 45 projections over 3.1 degrees passed the check as "ok"; the scan only
    said limited_angle_coverage at its end."""
    radians = [float(np.radians(a)) for a in ANGLES]
    values = danmax_config(len(ANGLES), angle_start=0.0, angle_range=radians[1] * len(ANGLES))
    cfg = PipelineConfig.from_mapping(values)
    scan = danmax_scan(radians)
    survey = survey_events(((int(e.event_number), e.streams) for e in scan), cfg)
    said = describe(survey, cfg, survey.projection_angles(cfg))[1]
    assert [w.split(":")[0] for w in said] == ["limited_angle_coverage"], said
    assert "angles cover only 3.1 of 180 degrees" in said[0]
    assert "limited_angle_coverage" in run_scan(scan, values, 1).notices
