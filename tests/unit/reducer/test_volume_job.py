"""The end-of-scan volume: batches, progress, and 'finished' with the last slices."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.messages import WorkerResult
from streamtomo.pipeline.reconstruction.backends import reconstruct
from streamtomo.pipeline.reconstruction.backends.fourier import FourierBackend
from streamtomo.pipeline.reconstruction.preprocess import prepare_volume_sinograms
from streamtomo.pipeline.streaming.frame_processor import FrameProcessor
from streamtomo.pipeline.streaming.live_scan import LiveScan
from streamtomo.reducer import volume_job
from tests.unit.pipeline.test_live_scan import config, make_frames


def reduced_scan(cfg: PipelineConfig) -> LiveScan:
    """Every frame of the test scan reduced, its end reached: the volume is next."""
    scan = LiveScan(cfg)
    worker = FrameProcessor(cfg)
    for frame in make_frames():
        scan.add_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    scan.finish(volume_follows=True)
    return scan


@pytest.mark.parametrize("backend", ["default", "direct"])
def test_volume_grows_in_batches_and_finishes_with_its_last_slices(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """``default`` (fourier) takes the in-place path, ``direct`` the generic batch copies."""
    cfg = config(volume=True, backend=backend)
    scan = reduced_scan(cfg)
    assert scan.state == "reconstructing"
    seen: list[tuple[str, int]] = []
    monkeypatch.setattr(volume_job, "batch_rows", lambda *args: 1)
    monkeypatch.setattr(volume_job, "rows_per_publish", lambda pairs: 1)
    in_place = FourierBackend.reconstruct_rows
    calls: list[int] = []

    def counted(self: FourierBackend, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        in_place(self, *args, **kwargs)

    monkeypatch.setattr(FourierBackend, "reconstruct_rows", counted)
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
        backend=backend,
    )
    assert len(calls) == (rows if backend == "default" else 0)
    np.testing.assert_allclose(scan.volume, expected, atol=1e-5 * float(np.abs(expected).max()))


def test_rows_prepared_together_are_still_reconstructed_batch_by_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Zinger removal needs neighbouring rows: every row is prepared at once, and the
    volume still grows (and can be cancelled) one batch at a time."""
    cfg = config(volume=True, backend="direct", zinger_removal=True)
    scan = reduced_scan(cfg)
    monkeypatch.setattr(volume_job, "MAX_BATCH_ROWS", 1)
    seen: list[tuple[str, int]] = []
    assert volume_job.reconstruct_volume(scan, threading.RLock(), lambda: seen.append((scan.state, scan.volume_done)))
    assert scan.volume is not None and scan.sinogram is not None and scan.geometry is not None
    rows = scan.volume.shape[0]
    assert seen == [("reconstructing", done) for done in range(rows)] + [("finished", rows)]
    filled = scan.sinogram.filled_slots()
    prepared = prepare_volume_sinograms(np.ascontiguousarray(scan.sinogram.data[:, filled]), zingers=True)
    expected = reconstruct(
        prepared, scan.sinogram.angles()[filled], scan.geometry.center, cfg.filter, scan.geometry.size, backend="direct"
    )
    np.testing.assert_allclose(scan.volume, expected, atol=1e-5 * float(np.abs(expected).max()))


def test_projections_are_prepared_in_batches_with_the_values_of_the_whole_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Paganin and zinger removal work per projection: prepared three projections at a
    time, the volume is that of the whole stack prepared at once, bit for bit."""
    cfg = config(volume=True, backend="direct", zinger_removal=True, paganin_delta_beta=50.0)
    scan = reduced_scan(cfg)
    monkeypatch.setattr(volume_job, "projections_per_batch", lambda rows, cols: 3)
    calls: list[int] = []
    real = volume_job.prepare_projections

    def counted(block: Any, **kwargs: Any) -> Any:
        calls.append(len(block))
        return real(block, **kwargs)

    monkeypatch.setattr(volume_job, "prepare_projections", counted)
    assert volume_job.reconstruct_volume(scan, threading.RLock(), lambda: None)
    assert scan.volume is not None and scan.sinogram is not None and scan.geometry is not None
    filled = scan.sinogram.filled_slots()
    assert calls == [3] * (len(filled) // 3) + ([len(filled) % 3] if len(filled) % 3 else [])
    whole = prepare_volume_sinograms(
        np.ascontiguousarray(scan.sinogram.data[:, filled]),
        zingers=True,
        paganin_delta_beta=50.0,
        energy_kev=cfg.energy_kev,
        distance_m=cfg.distance_m,
        pixel_size_m=cfg.pixel_size_m,
    )
    expected = reconstruct(
        whole, scan.sinogram.angles()[filled], scan.geometry.center, cfg.filter, scan.geometry.size, backend="direct"
    )
    np.testing.assert_array_equal(scan.volume, expected)


def test_a_cancel_while_projections_are_prepared_stops_before_any_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    scan = reduced_scan(config(volume=True, backend="direct", zinger_removal=True))
    monkeypatch.setattr(volume_job, "projections_per_batch", lambda rows, cols: 2)
    cancel = volume_job.VolumeCancel()
    calls: list[int] = []
    real = volume_job.prepare_projections

    def cancelled_after_the_first(block: Any, **kwargs: Any) -> Any:
        calls.append(len(block))
        cancel.set("the next scan started")
        return real(block, **kwargs)

    monkeypatch.setattr(volume_job, "prepare_projections", cancelled_after_the_first)
    assert volume_job.reconstruct_volume(scan, threading.RLock(), lambda: None, cancel) is None
    assert calls == [2]  # the batch under way ends; no other starts
    assert scan.volume is not None and not np.any(scan.volume)
    rows = scan.volume.shape[0]
    assert scan.reason == f"the end-of-scan volume was cancelled after 0 of {rows} slices: the next scan started"


def test_batches_fit_the_memory_bound() -> None:
    assert (
        volume_job.batch_rows(2048, 3000, 2048, 2048) * 4 * (3000 * 2048 * 3 + 2048 * 2048 * 2)
        <= volume_job.BATCH_BYTES
    )
    assert volume_job.batch_rows(16, 10, 10, 10) == 16
    # Small rows: batches stay short enough for a cancel to be seen between them.
    assert volume_job.batch_rows(2048, 100, 64, 64) == volume_job.MAX_BATCH_ROWS
    # Preparing: 16 float32 copies of a batch of projections fit; at least one projection.
    assert volume_job.projections_per_batch(2048, 2048) * 16 * 4 * 2048 * 2048 <= volume_job.BATCH_BYTES
    assert volume_job.projections_per_batch(8192, 8192) == 1


def test_a_cancel_stops_the_volume_between_batches_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    scan = reduced_scan(config(volume=True))
    monkeypatch.setattr(volume_job, "rows_per_publish", lambda pairs: 1)
    cancel = volume_job.VolumeCancel()
    seen: list[tuple[str, int]] = []

    def publish() -> None:
        seen.append((scan.state, scan.volume_done))
        if scan.volume_done == 2:
            cancel.set("the next scan started")
            cancel.set("a later reason")  # the first reason stays

    assert volume_job.reconstruct_volume(scan, threading.RLock(), publish, cancel) is None
    assert scan.volume is not None and scan.volume.shape[0] > 3
    rows = scan.volume.shape[0]
    # The two slices done stay published; 'finished' comes with the reason, no more rows.
    assert seen == [("reconstructing", 0), ("reconstructing", 1), ("reconstructing", 2), ("finished", 2)]
    assert scan.reason == f"the end-of-scan volume was cancelled after 2 of {rows} slices: the next scan started"
    assert np.any(scan.volume[:2]) and not np.any(scan.volume[2:])
