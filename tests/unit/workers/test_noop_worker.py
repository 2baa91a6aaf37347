"""The reference workers of the benchmarks: a tiny result, or one as large as ours."""

from __future__ import annotations

import pickle

import numpy as np
from dranspose.event import EventData, StreamData

from streamtomo.workers.noop_worker import NoopWorker, RowsForwardingWorker
from tests.unit.workers.test_tomo_worker import parameters


def event(number: int, *frame_sizes: int) -> EventData:
    frames = [b"{}"] + [bytes(n) for n in frame_sizes]
    return EventData(event_number=number, streams={"orca": StreamData(typ="STINS", frames=frames)})


def test_the_noop_worker_answers_with_the_event_number() -> None:
    assert NoopWorker().process_event(event(7, 2 * 64 * 64)) == 7


def test_the_forwarding_worker_returns_float32_rows_as_large_as_a_corrected_frame() -> None:
    worker = RowsForwardingWorker()
    rows = worker.process_event(event(3, 2 * 256 * 512))  # a 256 x 512 uint16 frame
    assert isinstance(rows, np.ndarray) and rows.dtype == np.float32
    assert rows.size == 256 * 512
    assert len(pickle.dumps(rows)) > 4 * 256 * 512  # what crosses to the reducer
    assert worker.process_event(event(4, 2 * 256 * 512)) is rows  # made once per size
    assert worker.process_event(event(5, 100)) == 5  # a small stream: a tiny answer


def test_the_forwarding_worker_bins_as_the_scan_asks() -> None:
    binned = parameters(bin=2)
    assert "bin" in {p.name for p in RowsForwardingWorker.describe_parameters()}  # the controller passes it on
    rows = RowsForwardingWorker().process_event(event(3, 2 * 256 * 512), binned)
    assert isinstance(rows, np.ndarray) and rows.size == 128 * 256
