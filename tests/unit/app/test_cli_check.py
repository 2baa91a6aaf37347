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
    assert "ok (give --rows and --cols to check it against a detector too)" in capsys.readouterr().out
    assert main(["check", _parameters(tmp_path, center="30"), "--rows", "8", "--cols", "64"]) == 0
    assert "ok on a 8 x 64 detector; the reducer will hold 0.00 GB of" in capsys.readouterr().out


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
