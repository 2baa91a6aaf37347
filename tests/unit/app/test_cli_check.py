"""``streamtomo check``: what the scan would refuse, found before the beamtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamtomo.app.cli import main
from streamtomo.pipeline.reconstruction.backends import available_backends, installed_backends


def _parameters(tmp_path: Path, **values: str) -> str:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"name": k, "data": v} for k, v in values.items()]))
    return str(path)


def test_a_good_file_is_ok_and_says_what_it_did_not_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", _parameters(tmp_path, center="30")]) == 0
    assert "ok (give --rows and --cols, or --data, to check it against a detector too)" in capsys.readouterr().out
    assert main(["check", _parameters(tmp_path, center="30"), "--rows", "8", "--cols", "64"]) == 0
    out = capsys.readouterr().out
    assert "ok on a 8 x 64 detector; the reducer will hold 696.32 kB of" in out  # not "0.00 GB"
    assert "(memory_budget_gb: half of this machine's memory)" in out


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # The scan sees the binned detector: these passed check and then crashed a replay.
        ({"bin": "2", "rows": "6:8"}, "(bin 2: 4 x 32): row selection '6:8' selects rows outside 0..3"),
        ({"bin": "2", "center": "40"}, "(bin 2: 4 x 32): center 40.0 lies outside the detector (allowed 0..31)"),
        # What the reducer refuses at the first frame (it passed check).
        ({"memory_budget_gb": "1e-6"}, "this scan needs 696.32 kB"),
    ],
)
def test_what_the_scan_would_refuse_is_refused_here(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], values: dict[str, str], message: str
) -> None:
    assert main(["check", _parameters(tmp_path, **values), "--rows", "8", "--cols", "64"]) == 2
    assert message in capsys.readouterr().err


def test_a_volume_backend_that_is_not_installed_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = [name for name in available_backends() if name not in installed_backends()]
    if not missing:
        pytest.skip("every reconstruction backend is installed here")
    assert main(["check", _parameters(tmp_path, backend=missing[0], volume="True")]) == 2
    assert f"the end-of-scan volume: reconstruction backend {missing[0]!r}" in capsys.readouterr().err
    assert main(["check", _parameters(tmp_path, backend=missing[0], volume="False")]) == 0  # no volume: no need


# -- against the scan's own recordings (--data) ------------------------------------------
@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A simulated scan as the ingesters record it, with its parameter file."""
    out = tmp_path_factory.mktemp("scan")
    assert main(["simulate", "--out", str(out), "--rows", "8", "--cols", "64", "--angles", "90"]) == 0
    return out / "parameters.json", sorted(str(p) for p in out.glob("*.cbors"))


def _with(parameters: Path, tmp_path: Path, **changes: str) -> str:
    """The scan's parameter file with ``changes``."""
    values = {p["name"]: p["data"] for p in json.loads(parameters.read_text())}
    values.update(changes)
    return _parameters(tmp_path, **values)


def test_the_data_give_the_detector_and_show_the_scan_as_the_workers_read_it(
    recorded: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    parameters, data = recorded
    assert main(["check", str(parameters), "--data", *data]) == 0
    out, err = capsys.readouterr()
    assert "detector 8 x 64 uint16; 10 darks, 10 flats, 90 projections (kind_rule counts)" in out
    assert "90 projections from 0.000 to 178.000 deg" in out and "0 slots empty, 0 shared" in out
    assert "ok on a 8 x 64 detector" in out
    assert "warning" not in err


@pytest.mark.parametrize(
    ("changes", "warning"),
    [
        # Angles of another scan: half the slots stay empty, and it says which rule.
        ({"angle_range": "360"}, "45 slots empty"),
        # A fixed base of 1 on frames numbered from 0: the first frame is refused, every kind one off.
        ({"frame_base": "1"}, "frame_before_base"),
    ],
)
def test_parameters_that_misread_the_data_say_how(
    recorded: tuple[Path, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, str],
    warning: str,
) -> None:
    parameters, data = recorded
    assert main(["check", _with(parameters, tmp_path, **changes), "--data", *data]) == 0
    out, err = capsys.readouterr()
    assert warning in out + err


def test_parameters_under_which_no_projection_would_be_reduced_are_refused(
    recorded: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parameters, data = recorded
    assert main(["check", _with(parameters, tmp_path, encoder_field="INENC9.VAL.Mean"), "--data", *data]) == 2
    err = capsys.readouterr().err
    assert "encoder_field_missing" in err and "no frame of the data would be used" in err


def test_a_detector_shape_that_contradicts_the_data_is_refused(
    recorded: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    parameters, data = recorded
    assert main(["check", str(parameters), "--data", *data, "--rows", "16", "--cols", "64"]) == 2
    assert "the data's detector is 8 x 64" in capsys.readouterr().err


def test_data_that_are_no_recordings_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "scan.cbors"
    junk.write_bytes(b"not cbor at all")
    assert main(["check", _parameters(tmp_path), "--data", str(junk)]) == 2
    assert "--data:" in capsys.readouterr().err
