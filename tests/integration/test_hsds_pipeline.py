"""The reducer publishing a replayed scan to a real HSDS: read back with h5pyd as the
read-only viewer, equal to the reducer's own domain; a second scan gets a new name."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamtomo.app.local_hsds import LocalHsds
from streamtomo.app.runner import ReplayRun
from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec
from tests.support.hsds_fixtures import assert_mirrors, open_domain
from tests.support.replay_helpers import record

pytestmark = [pytest.mark.hsds, pytest.mark.slow]


def _run_with_hsds(
    recordings: list[Path], spec: SimulationSpec, server: LocalHsds, monkeypatch: pytest.MonkeyPatch, domain: str
) -> tuple[str, object]:
    monkeypatch.setenv("STREAMTOMO_HSDS_ENDPOINT", server.url)
    monkeypatch.setenv("STREAMTOMO_HSDS_CREDENTIALS", str(server.credentials_file(server.writer_user)))
    monkeypatch.setenv("STREAMTOMO_HSDS_DOMAIN", domain)
    run = ReplayRun(recordings, spec.config(), workers=2, http_port=0)
    try:
        reducer = run.start()
        assert reducer.hsds is not None, "the reducer did not start its HSDS writer"
        run.go()
        run.wait(timeout=120)
        name = reducer.hsds.domain_name
        return name, reducer
    finally:
        run.close()


def test_replayed_scan_lands_complete_on_hsds(
    tmp_path: Path, local_hsds: LocalHsds, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = SimulationSpec(rows=4, cols=48, angles=60, seed=4)
    recordings = record(ScanSimulator(spec).frames(), tmp_path, spec.config())
    wanted = f"{local_hsds.writer_folder}pipeline_{tmp_path.name[-8:]}.h5"
    name, reducer = _run_with_hsds(recordings, spec, local_hsds, monkeypatch, wanted)
    assert name == wanted
    viewer = local_hsds.accounts.by_name()[local_hsds.viewer_user]
    with open_domain(local_hsds, name, viewer) as f:
        assert_mirrors(f, reducer.domain)  # type: ignore[attr-defined]
        assert f["entry/status/state"].asstr()[()] == "finished"
        assert int(f["entry/reconstruction/n_projections"][()]) == spec.angles
    # The same name again: a new, versioned domain; the first one is untouched.
    second, _ = _run_with_hsds(recordings, spec, local_hsds, monkeypatch, wanted)
    assert second == wanted.replace(".h5", "_v2.h5")
