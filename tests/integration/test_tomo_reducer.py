"""The dranspose reducer adapter, driven directly (no replay): results in, a live domain out."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from dranspose.protocol import ParameterName, WorkParameter

from streamtomo.pipeline.messages import WorkerResult
from streamtomo.pipeline.streaming.frame_processor import FrameProcessor
from streamtomo.reducer.domain_layout import new_domain, update_domain
from streamtomo.reducer.tomo_reducer import TomoReducer
from tests.unit.pipeline.test_live_scan import config, make_frames


def parameters(**values: object) -> dict[Any, Any]:
    cfg = config(**values)
    return {
        ParameterName(k): WorkParameter(name=ParameterName(k), data=str(v).encode(), value=v)
        for k, v in cfg.to_dict().items()
    }


@pytest.fixture
def reducer(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("STREAMTOMO_HTTP_PORT", "0")
    monkeypatch.setenv("STREAMTOMO_CONTROL_PORT", "0")
    made = TomoReducer(parameters=parameters(volume=True, backend="direct"), context={})
    try:
        yield made
    finally:
        made.close()


def test_results_become_a_domain_with_every_final_product_and_then_finished(reducer: Any) -> None:
    worker = FrameProcessor(reducer.scan.config)
    generations = []
    for frame in make_frames():
        reducer.process_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
        reducer.timer()
        generations.append(int(reducer.domain.dataset("/entry/status/generation").array[()]))
    assert generations == sorted(generations) and generations[-1] > 0
    assert str(reducer.domain.dataset("/entry/status/state").array[()]) == "running"
    reducer.finish()
    domain = reducer.domain
    assert str(domain.dataset("/entry/status/state").array[()]) == "finished"
    volume = domain.dataset("/entry/reconstruction/volume").array
    assert int(domain.dataset("/entry/status/volume_slices_done").array[()]) == volume.shape[0]
    assert np.any(volume) and np.array_equal(domain.dataset("/entry/reconstruction/data").array, reducer.scan.slices())
    assert int(domain.dataset("/entry/status/projections").array[()]) == reducer.scan.config.n_projections
    # Nothing changed: publishing again bumps no generation (idle readers re-read nothing).
    before = int(domain.dataset("/entry/status/generation").array[()])
    reducer.timer()
    assert int(domain.dataset("/entry/status/generation").array[()]) == before


def test_update_domain_says_finished_only_with_the_volume() -> None:
    from streamtomo.pipeline.streaming.live_scan import LiveScan

    cfg = config(volume=True)
    scan = LiveScan(cfg)
    worker = FrameProcessor(cfg)
    for frame in make_frames():
        scan.add_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    scan.finish(volume_follows=True)
    domain = new_domain(cfg.domain)
    assert update_domain(domain, scan.snapshot())
    assert str(domain.dataset("/entry/status/state").array[()]) == "reconstructing"
    with pytest.raises(KeyError):
        domain.dataset("/entry/reconstruction/volume")
    assert scan.sinogram is not None and scan.geometry is not None
    scan.volume = np.ones((len(scan.geometry.sinogram_rows), scan.geometry.size, scan.geometry.size), np.float32)
    scan.volume_done, scan.state = scan.volume.shape[0], "finished"
    assert update_domain(domain, scan.snapshot())
    # One generation carries both: the volume and 'finished'.
    assert str(domain.dataset("/entry/status/state").array[()]) == "finished"
    assert domain.dataset("/entry/reconstruction/volume").shape == scan.volume.shape
    assert not update_domain(domain, scan.snapshot())
