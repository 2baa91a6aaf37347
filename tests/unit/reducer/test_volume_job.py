"""The end-of-scan volume: batches, progress, and 'finished' with the last slices."""

from __future__ import annotations

import threading

import numpy as np

from streamtomo.pipeline.messages import WorkerResult
from streamtomo.pipeline.reconstruction.backends import reconstruct
from streamtomo.pipeline.streaming.frame_processor import FrameProcessor
from streamtomo.pipeline.streaming.live_scan import LiveScan
from streamtomo.reducer import volume_job
from tests.unit.pipeline.test_live_scan import config, make_frames


def test_volume_grows_in_batches_and_finishes_with_its_last_slices(monkeypatch: object) -> None:
    cfg = config(volume=True)
    scan = LiveScan(cfg)
    worker = FrameProcessor(cfg)
    for frame in make_frames():
        scan.add_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    scan.finish(volume_follows=True)
    assert scan.state == "reconstructing"
    seen: list[tuple[str, int]] = []
    monkeypatch.setattr(volume_job, "batch_rows", lambda *args: 1)  # type: ignore[attr-defined]
    seconds = volume_job.reconstruct_volume(
        scan, threading.RLock(), lambda: seen.append((scan.state, scan.volume_done))
    )
    assert seconds is not None and scan.volume is not None
    rows = scan.volume.shape[0]
    # Published before the first batch, after every batch, and 'finished' only with the last.
    assert seen == [("reconstructing", done) for done in range(rows)] + [("finished", rows)]
    assert scan.sinogram is not None and scan.geometry is not None
    filled = scan.sinogram.filled_slots()
    expected = reconstruct(
        scan.sinogram.data[:, filled],
        scan.sinogram.angles()[filled],
        scan.geometry.center,
        cfg.filter,
        scan.geometry.size,
    )
    np.testing.assert_allclose(scan.volume, expected, atol=1e-5 * float(np.abs(expected).max()))


def test_batches_fit_the_memory_bound() -> None:
    assert (
        volume_job.batch_rows(2048, 3000, 2048, 2048, whole=False) * 4 * (3000 * 2048 * 3 + 2048 * 2048 * 2)
        <= volume_job.BATCH_BYTES
    )
    assert volume_job.batch_rows(16, 10, 10, 10, whole=False) == 16
    assert volume_job.batch_rows(2048, 3000, 2048, 2048, whole=True) == 2048
