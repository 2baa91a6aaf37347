"""The whole path through dranspose replay: simulator -> recordings -> workers -> reducer
-> live domain, read back with h5pyd 1.0 from the running server."""

from __future__ import annotations

import time
from pathlib import Path

import h5pyd
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from streamtomo.app.runner import ReplayRun
from streamtomo.pipeline.reconstruction.fbp import fbp
from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec
from tests.support.replay_helpers import domain_arrays, record, replay, run_to_end

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulationSpec, list[Path]]:
    spec = SimulationSpec(rows=6, cols=64, angles=90, seed=3)
    out = tmp_path_factory.mktemp("scan")
    return spec, record(ScanSimulator(spec).frames(), out, spec.config())


def test_three_workers_give_the_same_domain_as_one(small_scan: tuple[SimulationSpec, list[Path]]) -> None:
    spec, recordings = small_scan
    one = run_to_end(recordings, spec.config(), workers=1)
    three = run_to_end(recordings, spec.config(), workers=3)
    assert one.keys() == three.keys()
    for path in one:
        if path in ("/entry/status/last_update", "/entry/status/generation", "/entry/start_time"):  # clocks
            continue
        if one[path].dtype.kind == "f":
            np.testing.assert_allclose(
                three[path], one[path], rtol=1e-5, atol=1e-6 * float(np.abs(one[path]).max() or 1), err_msg=path
            )
        else:
            assert np.array_equal(three[path], one[path]), path
    assert int(one["/entry/reconstruction/n_projections"]) == spec.angles
    assert one["/entry/status/state"][()] == "finished"


def test_final_slices_equal_offline_fbp(small_scan: tuple[SimulationSpec, list[Path]]) -> None:
    spec, recordings = small_scan
    arrays = run_to_end(recordings, spec.config(), workers=2)
    rows = list(arrays["/entry/sinogram/detector_row"])
    positions = [rows.index(r) for r in arrays["/entry/reconstruction/slice_rows"]]
    sino = arrays["/entry/sinogram/data"][positions]
    expected = fbp(sino, arrays["/entry/sinogram/rotation_angle"], spec.config().center_value(spec.cols))
    got = arrays["/entry/reconstruction/data"]
    assert float(np.abs(got - expected).max() / np.abs(expected).max()) < 1e-4


def test_ssim_against_the_phantom(tmp_path: Path) -> None:
    # 128x128 slices of a 128-pixel phantom on a detector wider than its diagonal,
    # pixels integrating their area (oversample), as a real detector does.
    spec = SimulationSpec(rows=1, cols=192, angles=180, seed=1, phantom_size=128, oversample=4)
    simulator = ScanSimulator(spec)
    # Poisson noise at 20000 counts: an apodised filter, as a scientist would pick
    # (ramp gives 0.87 here, 0.94 without noise).
    config = spec.config(filter="hann")
    arrays = run_to_end(record(simulator.frames(), tmp_path, config), config, workers=2)
    truth = simulator.ground_truth()[0]
    got = arrays["/entry/reconstruction/data"][0]
    ssim = structural_similarity(truth, got, data_range=float(truth.max() - truth.min()))
    assert ssim >= 0.9, ssim


def test_h5pyd_reads_the_live_domain_while_frames_arrive(small_scan: tuple[SimulationSpec, list[Path]]) -> None:
    spec, recordings = small_scan
    for run in replay(recordings, spec.config(), workers=2, rate_hz=150):
        run.go()
        seen: list[int] = []
        compared = 0
        deadline = time.monotonic() + 60
        while not run.done and time.monotonic() < deadline:
            try:
                with h5pyd.File(run.reducer.domain.name, "r", endpoint=run.reducer.endpoint) as f:
                    if "sinogram" not in f["entry"]:
                        time.sleep(0.05)
                        continue
                    status = f["entry/status"]
                    generation = int(status["generation"][()])
                    n = int(f["entry/reconstruction/n_projections"][()])
                    sino = f["entry/sinogram/data"][...]
                    slices = f["entry/reconstruction/data"][...]
                    # Equal to the reducer's arrays when nothing changed during the read.
                    with run.reducer.lock:
                        same = int(run.reducer.domain.generation) == generation
                        mine = domain_arrays(run.reducer)
                    # Slices and status change only at a publish (generation); sinogram slots
                    # appear as soon as they are placed (the server shares that array), so
                    # every slot the reader saw filled must equal the reducer's.
                    filled = np.flatnonzero(np.any(sino != 0, axis=(0, 2)))
                    np.testing.assert_array_equal(sino[:, filled], mine["/entry/sinogram/data"][:, filled])
                    if same:
                        np.testing.assert_array_equal(slices, mine["/entry/reconstruction/data"])
                        compared += 1
                    seen.append(n)
            except OSError:
                pass
            time.sleep(0.05)
        run.wait(timeout=60)
        partial = [n for n in seen if 0 < n < spec.angles]
        assert len(set(partial)) >= 3, f"too few live states seen: {seen}"
        assert compared >= 1


def test_live_centre_change_gives_the_same_final_slices(small_scan: tuple[SimulationSpec, list[Path]]) -> None:
    import requests

    spec, recordings = small_scan
    new_centre = "33.0"
    target = run_to_end(recordings, spec.config(center=new_centre), workers=2)
    for run in replay(recordings, spec.config(), workers=2, rate_hz=200):
        # Changes go to the reducer's control API, with its token and a JSON body.
        url = f"{run.reducer.control.url}/streamtomo/parameters"
        auth = {"Authorization": f"Bearer {run.reducer.control.token}"}
        assert requests.get(url, headers=auth, timeout=5).json()["parameters"]["center"] == spec.config().center
        run.go()
        deadline = time.monotonic() + 30
        while run.reducer.scan.n_projections < spec.angles // 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not run.done, "the scan ended before the change: slow the replay down"
        bad = requests.post(f"{url}/center", json={"value": "1e6"}, headers=auth, timeout=5)
        assert bad.status_code == 400
        assert "outside the detector" in bad.reason
        assert requests.post(f"{url}/n_projections", json={"value": "5"}, headers=auth, timeout=5).status_code == 400
        response = requests.post(f"{url}/center", json={"value": new_centre}, headers=auth, timeout=5)
        assert response.status_code == 202, response.reason
        run.wait(timeout=60)
        run.reducer.timer()
        got = domain_arrays(run.reducer)
    np.testing.assert_allclose(
        got["/entry/reconstruction/data"],
        target["/entry/reconstruction/data"],
        rtol=1e-5,
        atol=1e-5 * float(np.abs(target["/entry/reconstruction/data"]).max()),
    )
    assert '"center": "33.0"' in str(got["/entry/reconstruction/parameters"][()])
    assert int(got["/entry/status/settings_pending"][()]) == 0  # the change was applied


def test_cor_sweep_and_volume_are_published(small_scan: tuple[SimulationSpec, list[Path]]) -> None:
    spec, recordings = small_scan
    config = spec.config(backend="direct")  # the volume by the same FBP as the live slices
    arrays = run_to_end(recordings, config, workers=2)
    center = config.center_value(spec.cols)
    centers = arrays["/entry/reconstruction/cor_sweep/centers"]
    np.testing.assert_allclose(centers, center + np.arange(-3, 4) * config.cor_sweep_step)
    sweep = arrays["/entry/reconstruction/cor_sweep/data"]
    slices = arrays["/entry/reconstruction/data"]
    assert sweep.shape == (7, *slices.shape[1:])
    # The middle candidate is the configured centre on the middle live slice's row.
    middle = slices[len(slices) // 2]
    assert float(np.abs(sweep[3] - middle).max() / np.abs(middle).max()) < 1e-3
    # The volume has every sinogram row; its rows equal the live slices.
    volume = arrays["/entry/reconstruction/volume"]
    rows = list(arrays["/entry/sinogram/detector_row"])
    assert volume.shape == (len(rows), *slices.shape[1:])
    for k, row in enumerate(arrays["/entry/reconstruction/slice_rows"]):
        got = volume[rows.index(row)]
        assert float(np.abs(got - slices[k]).max() / np.abs(slices[k]).max()) < 1e-4, row


def test_volume_preprocessing_reduces_rings_and_zingers(tmp_path: Path) -> None:
    from streamtomo.pipeline.scan import Frame, ImageKey

    spec = SimulationSpec(rows=4, cols=64, angles=90, seed=5, noise=False)
    clean = list(ScanSimulator(spec).frames())
    rng = np.random.default_rng(0)
    damaged = []
    for f in clean:
        data = f.data.astype(np.float64)
        if f.key == ImageKey.PROJECTION:
            data[:, 20] *= 0.93  # a column whose gain drifted after the flats: a ring
            hits = rng.integers(0, data.size, 3)
            data.flat[hits] = 60000  # zingers
        damaged.append(Frame(f.index, f.key, np.clip(data, 0, 65535).astype(np.uint16), f.angle_deg))
    base = spec.config(backend="direct")
    reference = run_to_end(record(clean, tmp_path / "clean", base), base, workers=1)["/entry/reconstruction/volume"]
    recordings = record(damaged, tmp_path / "damaged", base)
    plain = run_to_end(recordings, base, workers=1)["/entry/reconstruction/volume"]
    fixed_config = spec.config(backend="direct", ring_removal=True, zinger_removal=True)
    fixed = run_to_end(recordings, fixed_config, workers=1)["/entry/reconstruction/volume"]

    def error(volume: np.ndarray) -> float:
        return float(np.sqrt(np.mean((volume - reference) ** 2)))

    assert error(fixed) < 0.5 * error(plain), (error(fixed), error(plain))


def test_a_run_closed_before_it_went_stops_its_replay(
    small_scan: tuple[SimulationSpec, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C between start and go: the replay waited for go for good, close gave up on it
    after 30 s and the thread was left behind."""
    monkeypatch.setenv("STREAMTOMO_HTTP_PORT", "0")
    monkeypatch.setenv("STREAMTOMO_CONTROL_PORT", "0")
    spec, recordings = small_scan
    run = ReplayRun(recordings, spec.config(), workers=1, http_port=0)
    run.start()
    run.close()
    assert run._thread is not None and not run._thread.is_alive()


def test_a_run_interrupted_before_it_went_ends_at_once_with_nothing_streamed(
    small_scan: tuple[SimulationSpec, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C or SIGTERM between start and go (the demo's intro line): the replay still
    waited for go, so the CLI's wait ran its whole timeout, and the summary counted the
    seconds since 1970."""
    monkeypatch.setenv("STREAMTOMO_HTTP_PORT", "0")
    monkeypatch.setenv("STREAMTOMO_CONTROL_PORT", "0")
    spec, recordings = small_scan
    run = ReplayRun(recordings, spec.config(), workers=1, http_port=0)
    try:
        run.start()
        run.interrupt()
        run.wait(timeout=20)  # raised TimeoutError: the stream never began, nor ended
        summary = run.summary()
        assert summary.frames == 0 and summary.seconds == 0.0
    finally:
        run.close()


def test_the_summary_times_the_stream_apart_from_the_end_of_scan(
    small_scan: tuple[SimulationSpec, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary's seconds (and frames/s) counted the end-of-scan volume too."""
    monkeypatch.setenv("STREAMTOMO_HTTP_PORT", "0")
    monkeypatch.setenv("STREAMTOMO_CONTROL_PORT", "0")
    spec, recordings = small_scan
    run = ReplayRun(recordings, spec.config(volume=True), workers=1, http_port=0)
    try:
        run.start()
        run.go()
        run.wait(timeout=120)
        summary = run.summary()
        # The stream's end lies between the final slices (published in finish) and the run's.
        assert run.started_at < run.reducer.final_slices_at <= run.reduced_at <= run.finished_at
        assert summary.seconds == pytest.approx(run.reduced_at - run.started_at)
        assert summary.end_of_scan_s == pytest.approx(run.finished_at - run.reduced_at)
        assert summary.frames_per_second == pytest.approx(summary.frames / summary.seconds)
    finally:
        run.close()
