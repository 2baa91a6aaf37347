"""A simulated scan too large for the machine is refused before anything is allocated."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamtomo.app.cli import main
from streamtomo.pipeline.config import ConfigError
from streamtomo.pipeline.simulation import projector, simulator
from streamtomo.pipeline.simulation.projector import ProjectionTooLarge, project_shepp_logan_3d
from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec, SimulationTooLarge


def test_a_spec_larger_than_the_machine_is_refused_with_its_options() -> None:
    """--angles 100000000 ended in numpy's _ArrayMemoryError (a traceback, exit 1)."""
    with pytest.raises(SimulationTooLarge, match=r"100000000 angles \(--angles\) of 16 rows \(--rows\)") as caught:
        SimulationSpec(angles=100_000_000)
    assert isinstance(caught.value, ConfigError)  # the CLI's one-line error, exit 2
    assert "(--cols)" in str(caught.value) and "more than this machine's" in str(caught.value)
    SimulationSpec(angles=360)  # an ordinary size still is one


def test_the_limit_is_the_projection_peak_against_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SimulationSpec(rows=4, cols=32, angles=10)
    assert spec.memory_bytes() == 10 * 4 * 32 * projector.PEAK_BYTES_PER_PIXEL
    monkeypatch.setattr(simulator, "memory_limit_bytes", lambda: spec.memory_bytes() - 1)
    with pytest.raises(SimulationTooLarge, match="give fewer angles, rows or columns"):
        SimulationSpec(rows=4, cols=32, angles=10)
    monkeypatch.setattr(simulator, "memory_limit_bytes", lambda: spec.memory_bytes())
    assert len(list(ScanSimulator(SimulationSpec(rows=4, cols=32, angles=10)).frames())) == 30


def test_the_projector_checks_before_it_allocates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(projector, "memory_limit_bytes", lambda: 1000)
    with pytest.raises(ProjectionTooLarge, match="projecting 3 angles x 4 rows x 32 columns needs about"):
        project_shepp_logan_3d(4, 32, [0.0, 60.0, 120.0])
    monkeypatch.undo()
    assert project_shepp_logan_3d(4, 32, [0.0, 60.0, 120.0]).shape == (3, 4, 32)


@pytest.mark.parametrize("command", ["simulate", "demo"])
def test_the_cli_refuses_it_in_one_line_and_makes_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    out = tmp_path / "sim"
    argv = [command, "--angles", "100000000", *(["--out", str(out)] if command == "simulate" else [])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamtomo: error: simulating 100000000 angles (--angles)"), err
    assert "Traceback" not in err
    assert not out.exists()
