"""How often partial sums reach the reducer, and how often it rewrites the live products.

Many workers each send a sum of the same size however few projections it holds: the
reducer's intake must stay bounded as workers are added, and its rewrites of the
published slices bounded as sums come more often.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.messages import DetectorInfo, WorkerResult
from streamtomo.pipeline.scan import ImageKey
from streamtomo.pipeline.streaming import frame_processor, live_geometry, snapshot
from streamtomo.pipeline.streaming.frame_processor import FrameProcessor
from streamtomo.pipeline.streaming.live_geometry import SUM_INTAKE_BYTES_S, LiveSliceGeometry
from streamtomo.pipeline.streaming.live_scan import LiveScan

ROWS, COLS = 4, 32


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scan_config(**kw: object) -> PipelineConfig:
    values: dict[str, object] = {"n_darks_before": 1, "n_flats_before": 1, "n_projections": 400, "flush_every": 1000}
    values.update(kw)
    return PipelineConfig.from_mapping(values)


@pytest.mark.parametrize("cols", [1024, 2048])
def test_sums_by_age_bring_the_reducer_a_bounded_rate_whatever_the_worker_count(cols: int) -> None:
    geometry = LiveSliceGeometry(scan_config(), DetectorInfo(16, cols, "uint16"))
    alone = geometry.flush_age(0.25)
    assert alone == geometry.flush_age(0.25, 1.0) == 0.25 * min(8.0, geometry.partial_bytes / (12 << 20))
    for workers in (2, 4, 14, 64):
        age = geometry.flush_age(0.25, workers)
        assert age >= alone
        assert workers * geometry.partial_bytes / age <= SUM_INTAKE_BYTES_S * (1 + 1e-9)
    # The more workers, the longer each one waits.
    assert geometry.flush_age(0.25, 64) > geometry.flush_age(0.25, 14) > alone


def frames_to(worker: FrameProcessor, events: list[int], first: int = 0) -> list[object]:
    """One projection per event number given (the events dranspose dealt this worker),
    frames ``first``, ``first + 1``, ...; before the first, a dark and a flat."""
    rng = np.random.default_rng(first)
    out: list[object] = []
    if first == 0:
        out += worker.process(0, ImageKey.DARK, np.full((ROWS, COLS), 100, np.uint16), 0.0, event=1)
        out += worker.process(1, ImageKey.FLAT, np.full((ROWS, COLS), 20000, np.uint16), 0.0, event=2)
    for k, event in enumerate(events):
        index = max(first, 2) + k
        counts = rng.integers(5000, 15000, (ROWS, COLS)).astype(np.uint16)
        out += worker.process(index, ImageKey.PROJECTION, counts, 0.45 * index, event=event)
    return out


def test_a_worker_reads_how_many_share_the_stream_from_the_gaps_between_its_events() -> None:
    worker = FrameProcessor(scan_config(), "w0")
    assert worker.workers_sharing() == 1.0  # nothing pending
    frames_to(worker, [3])
    assert worker.workers_sharing() == 1.0  # one projection says nothing
    worker.flush()
    frames_to(worker, [10, 14, 17, 23], first=3)
    assert worker.workers_sharing() == pytest.approx(20 / 4)  # events 3 ... 23, across the two sums
    # With many workers a sum may hold one projection: the estimate spans sums.
    alone = FrameProcessor(scan_config(), "w1")
    for k, event in enumerate([5, 13, 21, 29]):
        frames_to(alone, [event], first=k and k + 2)
        assert alone.workers_sharing() == (1.0 if k == 0 else 8.0)
        assert alone.flush() is not None
    alone.reset()  # a new scan
    assert alone.workers_sharing() == 1.0


def test_a_worker_among_many_holds_its_sum_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(frame_processor.time, "monotonic", clock)
    config = scan_config()
    alone = FrameProcessor(config, "alone")
    frames_to(alone, [3, 4, 5, 6])
    geometry = alone.geometry
    assert geometry is not None
    own = geometry.flush_age(config.publish_interval)
    # An intake that one worker's sums at their own age just reach: four workers must
    # wait four times as long.
    monkeypatch.setattr(live_geometry, "SUM_INTAKE_BYTES_S", geometry.partial_bytes / own)
    one_of_four = FrameProcessor(config, "one of four")
    frames_to(one_of_four, [3, 7, 11, 15])
    clock.now += 1.5 * own
    assert alone.flush_if_due() is not None
    assert one_of_four.flush_if_due() is None
    clock.now += 2.0 * own
    assert one_of_four.flush_if_due() is None
    clock.now += 0.6 * own
    partial = one_of_four.flush_if_due()
    assert partial is not None and partial.events == (3, 7, 11, 15)


@pytest.mark.parametrize(
    ("rows", "cols", "every"),
    [
        (32, 256, 48),  # bench_pipeline's frames: by the rows (was 8: sums 12x the rows' bytes)
        (6, 64, 64),
        (1024, 1024, 48),  # by size, as before
        (2048, 2048, 64),
        (2048, 128, 8),  # wide rows, small slices: the floor
    ],
)
def test_sums_weigh_at_most_twice_the_rows_they_follow(rows: int, cols: int, every: int) -> None:
    geometry = LiveSliceGeometry(scan_config(), DetectorInfo(rows, cols, "uint16"))
    assert geometry.flush_every(0) == every
    assert geometry.flush_every(5) == 5  # as configured
    if every < live_geometry.MAX_AUTO_FLUSH and every > live_geometry.MIN_AUTO_FLUSH:
        assert geometry.partial_bytes / every <= max(1 << 20, 2 * geometry.row_bytes)


def test_an_old_sum_goes_with_the_next_frame_not_only_on_a_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ticks reach each of W workers only every W intervals: a small sum sent only every
    48 projections by count left the live view behind (h5pyd saw two states of a scan)."""
    clock = Clock()
    monkeypatch.setattr(frame_processor.time, "monotonic", clock)
    config = scan_config(flush_every=0)
    worker = FrameProcessor(config, "w0")
    out = frames_to(worker, [3, 4])
    assert worker.geometry is not None and worker.geometry.flush_every(0) > 10
    assert not [m for m in out if type(m).__name__ == "PartialSum"]
    clock.now += worker.geometry.flush_age(config.publish_interval)
    sent = [m for m in frames_to(worker, [5], first=4) if type(m).__name__ == "PartialSum"]
    assert len(sent) == 1 and sent[0].events == (3, 4, 5)  # type: ignore[attr-defined]


def test_new_sums_rewrite_the_live_slices_at_most_once_per_rewrite_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(snapshot.time, "monotonic", clock)
    monkeypatch.setattr(frame_processor.time, "monotonic", clock)
    config = scan_config(flush_every=2, publish_interval=0.25)
    scan = LiveScan(config)
    worker = FrameProcessor(config, "w0")
    sent: list[int] = []

    def send(projections: int) -> None:
        events = [len(sent) + 3 + k for k in range(projections)]
        for item in frames_to(worker, events, first=len(sent) and len(sent) + 2):
            scan.add_result(WorkerResult([item]))  # type: ignore[list-item]
        sent.extend(events)

    send(2)
    assert scan.geometry is not None
    interval = scan.geometry.rewrite_interval(config.publish_interval)
    assert interval == config.publish_interval  # small slices: every publish
    monkeypatch.setattr(live_geometry, "REWRITE_BYTES_S", scan.geometry.partial_bytes / 3.0)  # now every 3 s
    first = scan.snapshot()
    assert first.slices_sum is not None and first.sweep_sum is not None
    send(2)  # a new partial sum
    clock.now += 1.0
    held = scan.snapshot()
    assert held.slices_sum is None and held.sweep_sum is None
    assert held.n_projections == first.n_projections  # the count the published slices are weighted with
    clock.now += 2.1
    later = scan.snapshot()
    assert later.slices_sum is not None and later.sweep_sum is not None
    assert later.n_projections == scan.n_projections > first.n_projections
    # A new weight alone (a projection placed, its sum still pending) waits for the
    # rewrite interval too, not only REWEIGHT_INTERVAL_S (2 s).
    send(1)
    clock.now += 2.5
    assert scan.n_projections > later.n_projections
    assert scan.snapshot().slices_sum is None
    clock.now += 0.6
    reweighted = scan.snapshot()
    assert reweighted.slices_sum is not None and reweighted.n_projections == scan.n_projections
    # A change of state is written at once, whatever the interval.
    send(2)
    clock.now += 0.1
    scan.finish()
    final = scan.snapshot()
    assert final.slices_sum is not None and final.n_projections == scan.n_projections


def test_slices_rebuilt_twice_between_two_publishes_are_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two live changes between publishes, again and again: each rebuild is written at
    the next publish. The products were told apart by id(ledger), which a ledger made
    after the published one was freed can take over: with the same version and count,
    its slices were not written. Every id() is one address here, as if each ledger took
    over the last one's; which ledger it is comes from its serial now."""
    monkeypatch.setattr(snapshot, "id", lambda obj: 0x7F0000001000, raising=False)
    config = scan_config(flush_every=2, publish_interval=0.25)
    scan = LiveScan(config)
    worker = FrameProcessor(config, "w0")
    for item in frames_to(worker, [3, 4, 5, 6]):
        scan.add_result(WorkerResult([item]))  # type: ignore[list-item]
    assert scan.snapshot().slices_sum is not None
    unwritten = 0
    for centre in range(40):  # CPython hands a freed ledger's address to the next one often
        scan.reconfigure(scan_config(flush_every=2, publish_interval=0.25, center=str(10 + centre % 2)))
        scan.reconfigure(scan_config(flush_every=2, publish_interval=0.25, center=str(12 + centre % 2)))
        unwritten += scan.snapshot().slices_sum is None
    assert unwritten == 0
