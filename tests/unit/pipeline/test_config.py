"""PipelineConfig: validation names the value and the choices; strings convert as
parameter files and the controller give them; derived values."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import pytest

from streamtomo.pipeline.config import (
    MAX_COR_SWEEP_STEPS,
    MAX_SCAN_FRAMES,
    MAX_SLICE_SIZE,
    ConfigError,
    PipelineConfig,
    parse_rows,
)
from streamtomo.pipeline.formats.errors import FrameError
from streamtomo.pipeline.formats.kinds import FrameKindRule
from streamtomo.pipeline.scan import ImageKey


def test_defaults_are_valid_and_round_trip_through_json() -> None:
    config = PipelineConfig()
    assert PipelineConfig.from_json(config.to_json()) == config


def test_strings_convert_like_dranspose_parameters() -> None:
    values = {f.name: str(getattr(PipelineConfig(), f.name)) for f in fields(PipelineConfig)}
    assert PipelineConfig.from_mapping(values) == PipelineConfig()
    config = PipelineConfig.from_mapping(
        {"n_projections": "90", "angle_range": "360", "volume": "no", "keep_references": "1"}
    )
    assert (config.n_projections, config.angle_range, config.volume, config.keep_references) == (90, 360.0, False, True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kind_rule": "guess"}, r"kind_rule 'guess' is not allowed; choose one of \['counts', 'header'\]"),
        ({"filter": "cosine"}, r"filter 'cosine' is not allowed"),
        ({"live_mode": "sometimes"}, r"live_mode 'sometimes' is not allowed"),
        ({"n_darks_before": -1}, r"n_darks_before must be >= 0, got -1"),
        ({"slice_size": -2}, r"slice_size must be >= 0"),
        ({"n_projections": 0}, r"n_projections must be >= 1, got 0"),
        ({"flush_every": -1}, r"flush_every must be >= 0"),
        ({"angle_range": 0}, r"angle_range must be in \(0, 360\]"),
        ({"angle_range": 361}, r"angle_range must be in \(0, 360\]"),
        ({"angle_tolerance": 0.6}, r"angle_tolerance must be in \(0, 0.5\]"),
        ({"counts_per_degree": 0}, r"counts_per_degree must be finite and at least 1e-06 in magnitude"),
        ({"counts_per_degree": "inf"}, r"counts_per_degree must be finite and at least 1e-06"),
        # a turn of the counter past a float: NaN angles crashed the worker
        ({"counts_per_degree": 1e-308}, r"counts_per_degree must be finite and at least 1e-06"),
        ({"counts_per_degree": "-nan"}, r"counts_per_degree must be finite"),
        ({"publish_interval": 0}, r"publish_interval must be > 0"),
        # any number that is not finite (angle_start inf crashed the PandA decoding)
        ({"angle_start": "inf"}, r"angle_start must be a finite number, got inf"),
        ({"publish_interval": "inf"}, r"publish_interval must be a finite number"),
        ({"energy_kev": "inf"}, r"energy_kev must be a finite number"),
        ({"slice_size": MAX_SLICE_SIZE + 1}, rf"slice_size must be at most {MAX_SLICE_SIZE}"),
        ({"center": "middle"}, r"center must be a column number, 'auto' or empty, got 'middle'"),
        ({"center": "nan"}, r"center must be a column number"),
        ({"energy_kev": 0}, r"energy_kev must be > 0"),
        ({"paganin_delta_beta": -1}, r"paganin_delta_beta must be >= 0"),
        ({"cor_sweep_step": 0}, r"cor_sweep_steps must be in 0..128 and cor_sweep_step > 0"),
        # each candidate is a slice every worker backprojects (1e6 took 2 GB before refusal)
        ({"cor_sweep_steps": MAX_COR_SWEEP_STEPS + 1}, r"cor_sweep_steps must be in 0..128"),
        # frame counts that are typos: 1e20 darks hung a worker building its bookkeeping
        ({"n_darks_before": 10**20}, r"the scan's frames \(n_darks_before \+ .*\) add up to 1\d{20}: at most 10000000"),
        ({"n_projections": MAX_SCAN_FRAMES, "n_flats_after": 1}, r"add up to 10000021: at most 10000000"),
        ({"frame_layout": "dark:5,proj:10000000"}, r"the scan's frames \(frame_layout\) add up to 10000005"),
        ({"kind_rule": "header", "n_projections": MAX_SCAN_FRAMES + 1}, r"n_projections must be at most 10000000"),
        ({"backend": "magic"}, r"backend 'magic' is unknown; choose one of"),
        ({"rows": "1-5"}, r"row selection '1-5' is not 'all', 'a:b\[:step\]' or 'r1,r2,...'"),
        ({"slice_rows": "a,b"}, r"row selection 'a,b'"),
        ({"n_projections": "many"}, r"n_projections: 'many' is not a valid int"),
        ({"n_projections": 2.5}, r"n_projections: 2.5 is not a valid int"),
        ({"volume": "maybe"}, r"volume: 'maybe' is not a valid bool"),
        # JSON true and null in a parameter file: the count 1 and the text 'None' before.
        ({"n_projections": True}, r"n_projections: True is not a valid int"),
        ({"center": None}, r"center: None is not a valid str"),
        ({"volume": None}, r"volume: None is not a valid bool"),
        ({"angle_range": False}, r"angle_range: False is not a valid float"),
        ({"n_projection": 10}, r"unknown configuration keys \['n_projection'\]; known: "),
    ],
)
def test_invalid_values_are_refused_with_a_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PipelineConfig.from_mapping(values)


def test_config_errors_are_value_errors() -> None:
    assert issubclass(ConfigError, ValueError)


def test_center_and_rows_against_the_detector() -> None:
    assert PipelineConfig().center_value(65) == 32.0
    assert PipelineConfig(center="auto").center_value(65) == 32.0
    assert PipelineConfig(center="10.5").center_value(64) == 10.5
    with pytest.raises(ConfigError, match=r"center 64.0 lies outside the detector \(allowed 0..63\)"):
        PipelineConfig(center="64").center_value(64)
    assert parse_rows("2:8:2", 10) == [2, 4, 6]
    assert parse_rows("5,1,5", 10) == [1, 5]
    with pytest.raises(ConfigError, match=r"selects rows outside 0..9"):
        parse_rows("3,12", 10)
    assert parse_rows("8:", 10) == parse_rows("8:10", 10) == parse_rows("-2:", 10) == [8, 9]
    # A range past the detector was clipped to it: rows 8 and 9 for '8:4000'.
    for past in ("8:4000", "12:", "-11:", "0:11:2"):
        with pytest.raises(ConfigError, match=r"selects rows outside 0..9"):
            parse_rows(past, 10)
    assert PipelineConfig(rows="0:9").live_slice_rows(20) == [0, 2, 4, 6, 8]
    with pytest.raises(ConfigError, match=r"slice_rows \[9\] are not sinogram rows"):
        PipelineConfig(rows="0:5", slice_rows="1,9").live_slice_rows(20)


def test_live_bounds() -> None:
    PipelineConfig().check_live_bounds(16, 128)
    with pytest.raises(ConfigError, match=r"more than 2x the detector width"):
        PipelineConfig(slice_size=300).check_live_bounds(16, 128)
    with pytest.raises(ConfigError, match=r"at most 32 live slices"):
        PipelineConfig(slice_rows="0:40").check_live_bounds(64, 128)


def test_expected_frames() -> None:
    config = PipelineConfig(n_darks_before=3, n_flats_before=4, n_projections=10, n_flats_after=2, n_darks_after=1)
    assert config.expected_frames() == 20
    assert PipelineConfig(kind_rule="header").expected_frames() is None


def test_kind_rule_from_config() -> None:
    rule = FrameKindRule.from_config(
        PipelineConfig(n_darks_before=1, n_flats_before=2, n_projections=3, n_flats_after=1)
    )
    kinds = [rule.kind(i, {"image_key": 2}) for i in range(8)]  # counts: a header key is ignored
    assert kinds == [ImageKey.DARK, *[ImageKey.FLAT] * 2, *[ImageKey.PROJECTION] * 3, ImageKey.FLAT, ImageKey.INVALID]
    header = FrameKindRule.from_config(PipelineConfig(kind_rule="header", kind_header_key="key"))
    assert header.kind(0, {"key": 1}) == ImageKey.FLAT
    with pytest.raises(FrameError, match="has no 'key'"):
        header.kind(0, {"image_key": 0})


def test_help_for_every_field() -> None:
    assert [f.name for f in fields(PipelineConfig) if not f.metadata.get("help")] == []
    assert json.loads(PipelineConfig().to_json())["domain"] == "/streamtomo/live.h5"


def test_nominal_angles_need_the_frame_layout() -> None:
    """angle_stream '' with kind_rule header: no frame has a position among the
    projections, so every projection was refused as missing_angle (check said ok)."""
    assert PipelineConfig(angle_stream="").nominal_angle(2) == 2 * PipelineConfig().slot_step  # counts: by layout
    with pytest.raises(
        ConfigError, match=r"angle_stream '' \(nominal angles from the frame layout\) needs kind_rule 'counts'"
    ):
        PipelineConfig(angle_stream="", kind_rule="header")


def test_a_row_range_that_selects_nothing_says_so() -> None:
    with pytest.raises(ConfigError, match=r"row selection '6:2' selects no row of 0..6"):
        parse_rows("6:2", 7)  # was "selects rows outside 0..6"
