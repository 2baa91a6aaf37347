"""Worker core + reducer core without dranspose: routing, loss, order, references."""

from __future__ import annotations

import dataclasses
import logging
import random
import sys

import numpy as np
import pytest

from streamtomo.pipeline.config import MAX_LIVE_SLICES, PipelineConfig
from streamtomo.pipeline.correction.references import ReferenceSet
from streamtomo.pipeline.messages import AngleRow, DetectorInfo, PartialSum, ProjectionRows, Rejected, WorkerResult
from streamtomo.pipeline.reconstruction.cor import cor_sweep
from streamtomo.pipeline.reconstruction.fbp import fbp
from streamtomo.pipeline.scan import Frame, ImageKey
from streamtomo.pipeline.streaming.binning import bin_frame
from streamtomo.pipeline.streaming.broadcast_references import built_by_workers, first_batch_of_workers
from streamtomo.pipeline.streaming.frame_processor import FrameProcessor
from streamtomo.pipeline.streaming.live_geometry import geometry_for
from streamtomo.pipeline.streaming.live_scan import LiveScan

ROWS, COLS, ANGLES = 4, 32, 36


def make_frames(n_darks: int = 3, n_flats: int = 3, flats_after: int = 0, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, COLS)
    dark = rng.normal(100, 1, (ROWS, COLS))
    flat = 20000 + 500 * np.cos(np.pi * x)[None, :] + np.zeros((ROWS, 1))
    frames: list[Frame] = []
    for _ in range(n_darks):
        frames.append(Frame(len(frames), ImageKey.DARK, np.rint(dark).astype(np.uint16), 0.0))
    for _ in range(n_flats):
        frames.append(Frame(len(frames), ImageKey.FLAT, np.rint(flat + dark).astype(np.uint16), 0.0))
    for i in range(ANGLES):
        angle = 180.0 * i / ANGLES
        shift = 0.3 * np.cos(np.radians(angle))
        integral = 1.5 * np.clip(1 - ((x - shift) / 0.5) ** 2, 0, None)[None, :] * (1 + 0.1 * np.arange(ROWS))[:, None]
        counts = flat * np.exp(-integral) + dark
        frames.append(Frame(len(frames), ImageKey.PROJECTION, np.rint(counts).astype(np.uint16), angle))
    for _ in range(flats_after):
        frames.append(Frame(len(frames), ImageKey.FLAT, np.rint(1.05 * flat + dark).astype(np.uint16), 0.0))
    return frames


def config(**kw: object) -> PipelineConfig:
    values: dict[str, object] = {"n_darks_before": 3, "n_flats_before": 3, "n_projections": ANGLES, "flush_every": 4}
    values.update(kw)
    return PipelineConfig.from_mapping(values)


def run(
    frames: list[Frame],
    n_workers: int,
    cfg: PipelineConfig,
    seed: int = 0,
    shuffle: bool = False,
    drop_last_partials: bool = True,
) -> LiveScan:
    """Replay-like routing: first frame to all workers, then random; references via callback."""
    rng = random.Random(seed)
    shared: dict[str, ReferenceSet] = {}
    scan = LiveScan(cfg, on_references=lambda refs: shared.__setitem__("refs", refs))
    workers = [FrameProcessor(cfg, f"w{i}") for i in range(n_workers)]
    results: list[WorkerResult] = []
    for frame in frames:
        # (replay broadcasts the first event: the stream header, which carries no frame)
        for worker in [rng.choice(workers)]:
            worker.set_references(shared.get("refs"))
            result = WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg)))
            if shuffle:
                results.append(result)
            else:
                scan.add_result(result)
        if frame.index % 7 == 0:
            scan.reconcile()
    if shuffle:
        rng.shuffle(results)
        for result in results:
            scan.add_result(result)
    if not drop_last_partials:
        for worker in workers:
            partial = worker.flush()
            if partial is not None:
                scan.add_result(WorkerResult([partial]))
    scan.finish()
    return scan


def offline(scan: LiveScan) -> np.ndarray:
    assert scan.sinogram is not None and scan.geometry is not None
    filled = scan.sinogram.filled_slots()
    sino = scan.sinogram.data[scan.geometry.slice_positions][:, filled]
    return fbp(sino, scan.sinogram.angles()[filled], scan.geometry.center, scan.config.filter)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("n_workers", [1, 3])
def test_streamed_equals_offline_fbp(n_workers: int) -> None:
    scan = run(make_frames(), n_workers, config())
    slices = scan.slices()
    assert slices is not None and scan.n_projections == ANGLES
    assert rel(slices, offline(scan)) < 1e-4
    assert scan.counts["partials"] > 0  # workers really contributed


def test_three_workers_equal_one_even_shuffled() -> None:
    frames = make_frames()
    one = run(frames, 1, config())
    three = run(frames, 3, config(), seed=5, shuffle=True)
    assert np.array_equal(one.sinogram.data, three.sinogram.data)  # type: ignore[union-attr]
    assert rel(three.slices(), one.slices()) < 1e-5  # type: ignore[arg-type]


def test_partial_sums_add_up_without_backfill() -> None:
    scan = run(make_frames(), 3, config(), drop_last_partials=False)
    # Only projections the workers sent raw (before they had references) need the
    # reducer's own backprojection (live, as soon as they are placed: nothing is left for the end).
    assert scan.counts["backprojected_here"] == scan.counts["corrected_by_reducer"] <= 2
    assert scan.counts["backfilled"] == 0
    assert rel(scan.slices(), offline(scan)) < 1e-4  # type: ignore[arg-type]


def test_stale_references_are_recorrected() -> None:
    frames = make_frames()
    cfg = config()
    scan = run(frames, 2, cfg)
    # A worker that corrected with other references: the reducer must fix its rows.
    stale_scan = LiveScan(cfg)
    worker = FrameProcessor(cfg)
    bogus = None
    for frame in frames:
        if frame.key == ImageKey.PROJECTION and bogus is None:
            refs = stale_scan.references.current
            assert refs is not None or stale_scan.references.batch_open
            # A version the reducer knows but that does not apply to these frames.
            bogus = ReferenceSet(
                99, np.zeros((ROWS, COLS), np.float32), np.full((ROWS, COLS), 30000, np.float32), before_index=10**9
            )
        stale_scan.add_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
        if bogus is not None:
            stale_scan.references.remember(bogus, applicable=False)  # the reducer knows the stale version
            worker.set_references(bogus)
    stale_scan.finish()
    assert stale_scan.counts["recorrected_stale"] > 0
    np.testing.assert_allclose(stale_scan.sinogram.data, scan.sinogram.data, atol=2e-3)  # type: ignore[union-attr]


def test_duplicate_frame_and_repeated_angle() -> None:
    frames = make_frames()
    cfg = config()
    frames = [*frames, frames[10]]  # the same frame again
    repeated = Frame(len(frames), ImageKey.PROJECTION, frames[8].data, frames[8].angle_deg)
    scan = run([*frames, repeated], 2, cfg)
    assert scan.rejected["duplicate_frame"] == 1
    assert scan.sinogram.counts.max() == 2  # type: ignore[union-attr]
    assert rel(scan.slices(), offline(scan)) < 1e-4  # type: ignore[arg-type]


def test_out_of_order_and_missing_angles() -> None:
    frames = make_frames()
    head, projections = frames[:6], frames[6:]
    kept = [f for f in projections if f.index % 5 != 0]
    random.Random(3).shuffle(kept)
    scan = run(head + kept, 2, config())
    assert scan.status()["missing_angles"] == len(projections) - len(kept)
    assert rel(scan.slices(), offline(scan)) < 1e-4  # type: ignore[arg-type]


def test_unknown_angle_nan_and_bad_frames_are_counted() -> None:
    frames = make_frames()
    bad = [
        Frame(1000, ImageKey.PROJECTION, frames[8].data, 400.0),  # unknown angle
        Frame(1001, ImageKey.PROJECTION, np.zeros((3, 3), np.uint16), 10.0),  # wrong shape
        Frame(1002, ImageKey.PROJECTION, frames[8].data.astype(np.complex64), 10.0),  # wrong dtype
        Frame(1003, ImageKey.PROJECTION, frames[8].data, None),  # missing angle
        Frame(1004, ImageKey.INVALID, frames[8].data, 10.0),
    ]
    # Counts of this detector as float32: another pixel type than its uint16 frames,
    # whose counts the references do not describe (one scaled 0..1 was 11x off).
    bad.append(Frame(1005, ImageKey.PROJECTION, frames[9].data.astype(np.float32), frames[9].angle_deg))
    scan = run(frames + bad, 2, config())
    assert scan.rejected["unknown_angle"] == 1
    assert scan.rejected["wrong_shape"] == 1
    assert scan.rejected["wrong_dtype"] == 2
    assert scan.rejected["missing_angle"] == 1
    assert scan.rejected["dropped_kind"] == 1
    assert scan.status()["projections"] == ANGLES
    assert scan.status()["state"] == "finished"


def test_a_few_nan_pixels_of_a_float_detector_are_repaired_not_rejected() -> None:
    """A float detector's frame with a NaN pixel is kept, the pixel repaired (in the
    test above, until the pixel type counted, a float32 frame among uint16 ones)."""
    frames = [Frame(f.index, f.key, f.data.astype(np.float32), f.angle_deg) for f in make_frames()]
    nan_frame = frames[9].data.copy()
    nan_frame[0, 3] = np.nan
    extra = Frame(1005, ImageKey.PROJECTION, nan_frame, frames[9].angle_deg)
    scan = run([*frames, extra], 2, config())
    assert scan.rejected == {}
    assert scan.status()["projections"] == ANGLES + 1  # the NaN frame is kept, repaired
    assert scan.status()["pixels_repaired"] >= 1
    assert scan.status()["state"] == "finished"


def test_projections_before_flats_are_held_not_lost() -> None:
    frames = make_frames()
    refs, projections = frames[:6], frames[6:]
    renumbered = [Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(projections + refs)]
    scan = run(renumbered, 2, config(n_darks_before=0, n_flats_before=0))
    assert scan.status()["projections"] == ANGLES
    assert rel(scan.slices(), offline(scan)) < 1e-4  # type: ignore[arg-type]


def test_a_held_projection_whose_placement_fails_holds_back_no_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """Projections held for their darks and flats are placed when the references come;
    should one placement raise (a bug), the ones before it are not placed again by the
    next result, and it does not raise again in front of every later one."""
    frames = make_frames()
    refs, projections = frames[:6], frames[6:]
    renumbered = [
        Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(projections[:10] + refs + projections[10:])
    ]
    cfg = config(n_darks_before=0, n_flats_before=0)
    shared: dict[str, ReferenceSet] = {}
    scan = LiveScan(cfg, on_references=lambda refs: shared.__setitem__("refs", refs))
    worker = FrameProcessor(cfg, "w0")
    place = LiveScan.place
    failing = 4  # the fifth held projection

    def place_or_fail(self: LiveScan, msg: ProjectionRows, *args: object, **kwargs: object) -> None:
        if msg.frame_index == failing:
            raise RuntimeError("placement failed")
        place(self, msg, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LiveScan, "place", place_or_fail)
    failures = 0
    for frame in renumbered:
        worker.set_references(shared.get("refs"))
        try:
            scan.add_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
        except RuntimeError:
            failures += 1
    scan.finish()
    assert failures == 1
    assert scan.sinogram is not None
    assert scan.sinogram.counts.max() == 1  # none placed twice
    assert scan.sinogram.missing_slots().tolist() == [failing]


@pytest.mark.parametrize("timer_first", [False, True])
def test_a_frame_its_worker_did_not_sum_and_the_nominal_check_moved_is_fixed_at_its_own_angle(
    timer_first: bool,
) -> None:
    """check_nominal_angles places a frame at the angle of another PandA row, and its
    worker sent raw rows (no darks and flats yet), so the reducer backprojects it. The
    ledger kept the worker's angle for it although the worker summed nothing, and the
    next fix of the record (the final angular weights, after a timer's reconcile) took
    it out there: the final slices were 3.6% off the FBP of the final sinogram."""
    cfg = config(check_nominal_angles=True)
    frames = make_frames()
    moved = cfg.first_projection() + 10  # measured at projection 9's angle: a double PandA trigger
    shared: dict[str, ReferenceSet] = {}
    scan = LiveScan(cfg, on_references=lambda refs: shared.__setitem__("refs", refs))
    worker = FrameProcessor(cfg, "w0")
    late = FrameProcessor(cfg, "late")  # never saw the darks and flats: sends raw rows
    for frame in frames:
        if frame.index == moved:
            rows = late.process(frame.index, frame.key, frame.data, frames[moved - 1].angle_deg)
            scan.add_result(WorkerResult(list(rows)))
            continue
        worker.set_references(shared.get("refs"))
        scan.add_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    last = worker.flush()
    if last is not None:
        scan.add_result(WorkerResult([last]))
    # The PandA's rows around it: projection 9's angle twice, then projection 10's.
    for row, at in (
        (moved - 2, moved - 2),
        (moved - 1, moved - 1),
        (moved, moved - 1),
        (moved + 1, moved),
        (moved + 2, moved + 2),
    ):
        scan.add_result(WorkerResult([AngleRow(row, frames[at].angle_deg)]))
    if timer_first:
        scan.reconcile()  # what the reducer's timer does before the scan ends
    scan.finish()
    assert scan.angle_join.joined == 1 and scan.n_projections == ANGLES
    assert rel(scan.slices(), offline(scan)) < 1e-4  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(4))
def test_flats_retaken_mid_scan_correct_every_later_projection(seed: int) -> None:
    """A second batch of flats halfway, the beam 30% brighter from there on: the later
    projections are corrected with the newer set. The newest set used to be the one
    with the larger version, a content digest: the first set in most of these scans."""
    base = make_frames(seed=seed)
    frames, _ = flats_retaken(scale=1.3 + 0.01 * seed, seed=seed)
    scan = run(frames, 1, config())
    plain = run(base, 1, config())
    assert scan.sinogram is not None and plain.sinogram is not None
    # The same -log transmission: the counts only differ by their rounding to integers.
    np.testing.assert_allclose(scan.sinogram.data, plain.sinogram.data, atol=1e-3)


def flats_retaken(scale: float = 1.3, after: int = ANGLES // 2, seed: int = 0) -> tuple[list[Frame], int]:
    """The scan with a second batch of 3 flats ``after`` projections, the beam ``scale``
    times brighter from there on; returns the frames and the index of the first new flat."""
    base = make_frames(seed=seed)
    dark = base[0].data.astype(float)
    half = 6 + after
    frames = list(base[:half])
    brighter = np.rint((base[3].data.astype(float) - dark) * scale + dark).astype(np.uint16)
    frames += [Frame(half + i, ImageKey.FLAT, brighter, 0.0) for i in range(3)]
    for f in base[half:]:
        data = np.rint((f.data.astype(float) - dark) * scale + dark).astype(np.uint16)
        frames.append(Frame(len(frames), f.key, data, f.angle_deg))
    return frames, half


def run_in_order(frames: list[Frame], order: list[int], lost: int = -1, finish: bool = True) -> LiveScan:
    """One worker takes the frames in stream order; the reducer gets the results of
    the frames in ``order`` in that order (the rest before them, in stream order),
    nothing of frame ``lost``; ``finish``: the scan ends."""
    cfg = config()
    shared: dict[str, ReferenceSet] = {}
    scan = LiveScan(cfg, on_references=lambda refs: shared.__setitem__("refs", refs))
    worker = FrameProcessor(cfg, "w0")
    results: dict[int, WorkerResult] = {}
    for frame in frames:
        worker.set_references(shared.get("refs"))
        items = worker.process(frame.index, frame.key, frame.data, frame.angle_deg, event=frame.index + 1)
        result = WorkerResult([item for item in items if getattr(item, "frame_index", None) != lost])
        if frame.index in order:
            results[frame.index] = result
        else:
            scan.add_result(result)
    for index in order:
        scan.add_result(results[index])
    if finish:
        scan.finish()
    return scan


def test_projections_that_overtake_flats_retaken_mid_scan_wait_for_them() -> None:
    """The new flats come through one worker, the next projections through another, and
    two projections reach the reducer first: they were placed with the old flats and
    never corrected again (off by log 1.3 in their slots, nothing counted)."""
    frames, half = flats_retaken()
    rest = list(range(half, len(frames)))
    in_order = run_in_order(frames, rest)
    overtaken = run_in_order(frames, [half + 3, half + 4, half, half + 1, half + 2, *rest[5:]])
    assert in_order.sinogram is not None and overtaken.sinogram is not None
    np.testing.assert_allclose(overtaken.sinogram.data, in_order.sinogram.data, atol=1e-5)
    assert overtaken.status()["projections"] == ANGLES and not overtaken.rejected


def test_projections_stop_waiting_for_a_flat_that_never_comes() -> None:
    """A flat taken before them that is lost: past a bound, the projections go on with
    the references that are here, counted and said (not held to the scan's end)."""
    frames, half = flats_retaken(after=2)  # more projections after them than may wait
    lost = half + 2
    scan = run_in_order(frames, [], lost=lost, finish=False)
    placed_before_end = scan.n_projections
    assert scan.counts["references_awaited_in_vain"] == 1
    assert placed_before_end > ANGLES // 2  # the later projections did not all wait for the end
    scan.finish()
    assert scan.status()["projections"] == ANGLES and scan.lost_frames() == [(lost, lost)]


def test_a_flat_retaken_after_one_was_given_up_is_still_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Giving up on a lost flat gave up on every reference then awaited: flats retaken
    later, still on their way, were not waited for, and the two projections that had
    overtaken them kept the old flats for good."""
    monkeypatch.setattr(LiveScan, "_wait_bound", lambda self: 8)  # ANGLES projections are few
    frames, half = flats_retaken(after=2, scale=1.0)  # a second batch after 2 projections
    lost = half + 2  # its last flat never comes
    more, again = flats_retaken(after=ANGLES - 4, scale=1.3)  # a third, brighter, 4 projections before the end
    frames = frames[: half + 3] + [
        Frame(index, frame.key, frame.data, frame.angle_deg)
        for index, frame in enumerate(more[half:], start=half + 3)  # renumbered after the second batch
    ]
    again += 3
    # The two projections after the third batch come first, then the projections that
    # wait for the lost flat (the give-up), then the third batch and the rest.
    late = [again + 3, again + 4, *range(half + 3, again), again, again + 1, again + 2, *range(again + 5, len(frames))]
    scan = run_in_order(frames, late, lost=lost)
    assert scan.counts["references_awaited_in_vain"] == 1  # the lost flat alone
    plain = run(make_frames(), 1, config())
    assert scan.sinogram is not None and plain.sinogram is not None
    # Every projection corrected with the flats of its own beam: the -log transmission alike.
    np.testing.assert_allclose(scan.sinogram.data, plain.sinogram.data, atol=1e-3)


def test_a_worker_used_for_a_second_scan_names_that_scans_own_references() -> None:
    """FrameProcessor.reset (a new scan) kept the newest reference position of the scan
    before: with flats after the projections, the second scan's projections named the
    first scan's last flat, and waited for it."""
    cfg = config(n_flats_after=3)
    frames = make_frames(flats_after=3)
    worker = FrameProcessor(cfg, "w0")
    for _scan in range(2):
        shared: dict[str, ReferenceSet] = {}
        scan = LiveScan(cfg, on_references=lambda refs, shared=shared: shared.__setitem__("refs", refs))
        named: set[int] = set()
        for frame in frames:
            worker.set_references(shared.get("refs"))
            items = worker.process(frame.index, frame.key, frame.data, frame.angle_deg, event=frame.index + 1)
            named |= {item.references_through for item in items if isinstance(item, ProjectionRows)}
            scan.add_result(WorkerResult(list(items)))
        assert named == {5}  # the last flat before the projections
        assert scan.n_projections == ANGLES  # all placed before the flats after them
        scan.finish()
        assert "references_awaited_in_vain" not in scan.counts
        worker.reset()


def test_a_change_after_an_auto_centre_scan_keeps_its_estimate() -> None:
    """center 'auto' is estimated at the end; a later change of another setting (a filter
    through the control API) kept 'auto' and rebuilt the slices about the middle."""
    frames = make_frames()
    shifted = [Frame(f.index, f.key, np.roll(f.data, 3, axis=1), f.angle_deg) for f in frames]  # the axis at 18.5
    scan = run(shifted, 1, config(center="auto"))
    assert scan.auto_center is not None and abs(scan.auto_center - 18.5) < 1.0
    estimate = scan.geometry.center
    scan.reconfigure(config(center="auto", filter="shepp-logan"))
    assert scan.geometry.center == estimate
    scan.reconcile(backfill=True)
    assert rel(scan.slices(), offline(scan)) < 1e-4  # type: ignore[arg-type]


def test_held_projections_keep_their_rows_when_the_transport_reuses_its_memory() -> None:
    """Rows arrive as views of the transport's memory (a ZeroMQ frame, a worker's ring
    slot) that is written again once the result is handled: frames held for their
    darks and flats (or for their PandA row, or the detector's shape) keep a copy."""
    frames = make_frames()
    refs, projections = frames[:6], frames[6:]
    renumbered = [Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(projections + refs)]
    cfg = config(n_darks_before=0, n_flats_before=0)
    expected = run(renumbered, 1, cfg)
    scan = LiveScan(cfg, on_references=lambda refs: None)
    worker = FrameProcessor(cfg, "w0")
    for frame in renumbered:
        items = []
        transport = []
        for item in worker.process(frame.index, frame.key, frame.data, frame.angle_deg):
            if isinstance(item, ProjectionRows):
                memory = np.array(item.rows)
                transport.append(memory)
                item = dataclasses.replace(item, rows=memory[...])  # a view, as received
            items.append(item)
        scan.add_result(WorkerResult(items))
        for memory in transport:
            memory[...] = 7  # the slot is written again
    scan.finish()
    assert scan.status()["projections"] == ANGLES
    np.testing.assert_array_equal(scan.sinogram.data, expected.sinogram.data)  # type: ignore[union-attr]


def test_flats_after_are_interpolated() -> None:
    frames = make_frames(flats_after=3)
    scan = run(frames, 2, config(n_flats_after=3))
    assert scan.counts["flats_interpolated"] == 1
    # Last projection: flat 5% brighter -> about log(1.05) more attenuation than at the start.
    first = run(make_frames(), 1, config())
    diff = scan.sinogram.data[:, -1] - first.sinogram.data[:, -1]  # type: ignore[union-attr]
    assert float(np.median(diff)) == pytest.approx(np.log(1.05) * (ANGLES - 1) / ANGLES, abs=5e-3)
    assert rel(scan.slices(), offline(scan)) < 1e-4  # type: ignore[arg-type]


def test_centre_change_rebuilds_to_same_result() -> None:
    frames = make_frames()
    target = run(frames, 1, config(center="15.0"))
    shared: dict[str, ReferenceSet] = {}
    scan = LiveScan(config(), on_references=lambda r: shared.__setitem__("r", r))
    worker = FrameProcessor(config())
    for frame in frames:
        if frame.index == 20:
            scan.reconfigure(config(center="15.0"))
            # The worker sends what it summed with the old settings (as TomoWorker
            # does): made for another geometry, the reducer must drop it.
            pending = worker.configure(config(center="15.0"))
            assert pending is not None
            scan.add_result(WorkerResult([pending]))
        worker.set_references(shared.get("r"))
        scan.add_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    scan.finish()
    assert scan.counts["partials_discarded"] == 1
    assert rel(scan.slices(), target.slices()) < 1e-5  # type: ignore[arg-type]


def test_partial_with_old_settings_is_discarded() -> None:
    scan = run(make_frames(), 1, config())
    before = scan.slices()
    scan.add_result(WorkerResult([PartialSum("w", "other", (7,), {0: np.ones_like(scan.live_sum)})]))  # type: ignore[arg-type]
    assert scan.counts["partials_discarded"] == 1
    assert np.array_equal(scan.slices(), before)  # type: ignore[arg-type]


def test_a_partial_sum_lost_before_its_rows_came_is_backprojected_before_the_end() -> None:
    """A worker's sum the reducer cannot use (its shared-memory slot unreadable), arriving
    before the rows it covers: once the rows are placed the reducer backprojects them
    itself at the next reconcile, without waiting for the scan's end."""
    frames = make_frames()
    reference = run(frames, 1, config(), drop_last_partials=False)
    shared: dict[str, ReferenceSet] = {}
    scan = LiveScan(config(), on_references=lambda r: shared.__setitem__("r", r))
    worker = FrameProcessor(config())
    lost = 0
    for frame in frames:
        worker.set_references(shared.get("r"))
        items = list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))
        sums = [item for item in items if isinstance(item, PartialSum)]
        rows = [item for item in items if not isinstance(item, PartialSum)]
        for partial in sums:
            if lost == 0:  # the first sum, lost, and ahead of the rows of its last frame
                lost += 1
                unreadable = PartialSum(
                    partial.worker, "unreachable: test", partial.frame_indices, {}, None, partial.events
                )
                scan.add_result(WorkerResult([unreadable]))
            else:
                scan.add_result(WorkerResult([partial]))
        scan.add_result(WorkerResult(rows))
    last = worker.flush()
    if last is not None:
        scan.add_result(WorkerResult([last]))
    assert lost == 1
    scan.reconcile()  # as the reducer's timer does while the scan runs: no backfill
    assert scan.counts["partials_discarded"] == 1
    assert rel(scan.slices(), reference.slices()) < 1e-5  # type: ignore[arg-type]


def test_broadcast_references_are_not_duplicates() -> None:
    frames = make_frames()
    cfg = config()
    scan = LiveScan(cfg)
    workers = [FrameProcessor(cfg, f"w{i}") for i in range(2)]
    for frame in frames[:6]:  # darks and flats reach every worker
        for worker in workers:
            scan.add_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    assert scan.counts["reference_copies"] == 6
    assert not scan.rejected


def test_a_refused_broadcast_message_counts_once_whatever_the_workers() -> None:
    """A message refused with no frame position (before the frame base, corrupt) is one
    message, though a broadcast dark or flat reaches every worker and each refuses it:
    with 2 workers a scan counted 60 rejected of the 40 frames it was sent."""
    scan = LiveScan(config())
    for event in (1, 2, 3):  # broadcast: both workers refuse each
        for worker in ("w0", "w1"):
            scan.add_result(WorkerResult([Rejected(None, "frame_before_base", f"event {event} ({worker})", event)]))
    scan.add_result(WorkerResult([Rejected(None, "corrupt_frame", "event 4", 4)]))  # one worker's event
    assert scan.rejected == {"frame_before_base": 3, "corrupt_frame": 1}
    assert scan.status()["frames_rejected"] == 4


def test_lost_frames_are_reported_as_ranges() -> None:
    frames = make_frames()
    lost = {10, 11, 12, 30}
    scan = run([f for f in frames if f.index not in lost], 2, config())
    assert scan.lost_frames() == [(10, 12), (30, 30)]
    assert scan.status()["frames_lost"] == 4


def test_a_failed_scan_reports_the_frames_it_never_got() -> None:
    """A scan that failed still says what never came: frames_lost was 0 for any failed
    scan, so a refused scan whose stream also lost frames showed no loss at all."""
    lost = {7, 8, 20}
    frames = [f for f in make_frames() if f.index not in lost]
    scan = run(frames, 2, config(memory_budget_gb=1e-9))  # refused at its first frame
    assert scan.state == "failed" and scan.rejected == {"scan_refused": len(frames)}
    assert scan.lost_frames() == [(7, 8), (20, 20)]
    status = scan.status()
    assert (status["frames_received"], status["frames_lost"]) == (len(frames), 3)
    assert status["frames_received"] + status["frames_lost"] == len(make_frames())


def test_a_scan_that_reduced_no_projection_reports_the_frames_it_never_got() -> None:
    """Only its darks and flats came: 'no projection was reduced', and every projection lost."""
    frames = [f for f in make_frames() if f.key != ImageKey.PROJECTION]
    scan = run(frames, 1, config())
    assert scan.state == "failed" and "no projection was reduced" in scan.reason
    assert scan.lost_frames() == [(6, 6 + ANGLES - 1)]
    assert scan.status()["frames_lost"] == ANGLES


@pytest.mark.parametrize("workers", [1, 2])
def test_a_scan_its_workers_refuse_names_the_cause_in_its_reason(workers: int) -> None:
    """Rows that do not fit the detector: the workers refuse every frame (scan_refused),
    and the reason, the file and the CLI's last line said only "42 scan_refused"; the
    cause was in one WARNING line."""
    scan = run(make_frames(), workers, config(rows="2:9"))
    assert scan.state == "failed" and scan.rejected == {"scan_refused": len(make_frames())}
    assert "rejected: 42 scan_refused (the first scan_refused: frame " in scan.reason, scan.reason
    assert f"row selection '2:9' selects rows outside 0..{ROWS - 1}" in scan.reason, scan.reason


def test_a_scan_refused_mid_stream_reports_no_loss_until_it_has_ended() -> None:
    """A refused scan fails at its first frame while the rest still stream in: those are
    not lost, and the status must not count them so before the scan has ended."""
    cfg = config(memory_budget_gb=1e-9)
    scan = LiveScan(cfg)
    worker = FrameProcessor(cfg, "w0")
    for frame in make_frames()[:10]:
        scan.add_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    assert scan.state == "failed"
    assert scan.lost_frames() == [] and scan.status()["frames_lost"] == 0
    scan.finish()
    assert scan.lost_frames() == [(10, len(make_frames()) - 1)]


def test_projections_all_at_one_angle_are_a_limited_angle_scan() -> None:
    """A rotation stage that never turned: every projection in one slot. The coverage
    notice was skipped below two filled slots, and the scan finished without a word."""
    frames = [
        Frame(f.index, f.key, f.data, 0.0 if f.key == ImageKey.PROJECTION else f.angle_deg) for f in make_frames()
    ]
    scan = run(frames, 2, config())
    assert scan.state == "finished" and scan.sinogram is not None and scan.sinogram.n_filled == 1
    assert scan.notices == {"limited_angle_coverage": 1}
    assert "1 distinct angle(s) cannot cover 180 degrees" in next(iter(scan.coverage_logged))


def test_two_angles_averaged_into_one_slot_are_a_notice_that_says_how_to_fix_the_grid() -> None:
    """Angles that jitter about half a step past the grid fall into either neighbour:
    pairs two steps apart averaged as one angle, the slots between empty, and only
    missing_angles and frames_per_angle hinted at it."""
    step = 180.0 / ANGLES
    frames = [
        Frame(
            f.index, f.key, f.data, None if f.angle_deg is None else f.angle_deg + step * (0.5 + 0.02 * (-1) ** f.index)
        )
        for f in make_frames()
    ]
    scan = run(frames, 1, config())
    assert scan.state == "finished" and scan.rejected.get("angles_share_slot", 0) > ANGLES // 4
    assert scan.notices["angles_share_slot"] == scan.rejected["angles_share_slot"]  # a notice, no frame refused
    assert scan.status()["frames_rejected"] == 0
    aligned = [
        Frame(f.index, f.key, f.data, None if f.angle_deg is None else f.angle_deg - 0.02 * step * (-1) ** f.index)
        for f in make_frames()
    ]
    assert "angles_share_slot" not in run(aligned, 1, config()).rejected  # jitter within a slot: one angle


def test_centre_outside_the_detector_falls_back_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    scan = run(make_frames(), 2, config(center="500"))
    assert scan.geometry is not None
    assert scan.geometry.center == (COLS - 1) / 2
    assert scan.n_projections == ANGLES
    assert any("outside the detector" in r.getMessage() for r in caplog.records)


def test_only_the_settings_that_do_not_fit_the_detector_fall_back_and_the_scan_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Checked at the first frame (set before it): a wrong slice_rows took a good centre
    with it (the slices at the detector middle, 0.50 correlated with the right ones on
    the tooth); the published parameters kept naming the value not used, and only a
    log line said so; and 'all' rows (5 slices before the detector is known) passed
    the limit of live slices."""
    centred = run(make_frames(), 1, config(center="14.5", slice_rows="3,9"))
    assert centred.geometry is not None and centred.geometry.center == 14.5
    assert centred.geometry.slice_rows.tolist() == [0, 1, 2, 3]  # the default rows
    assert centred.config.slice_rows == "" and centred.config.center == "14.5"
    assert centred.notices == {"settings_do_not_fit": 1} and centred.status()["frames_rejected"] == 0
    assert any(
        "row selection '3,9' selects rows outside 0..3: slice_rows '' taken instead" in r.getMessage()
        for r in caplog.records
    )
    outside = run(make_frames(), 1, config(center="500"))
    assert outside.config.center == "" and outside.notices == {"settings_do_not_fit": 1}
    tall = DetectorInfo(MAX_LIVE_SLICES + 8, COLS, "uint16")
    assert len(geometry_for(config(slice_rows="all"), tall).slice_rows) == 5  # the workers' rule too
    # The value stored before the first frame comes back with the next change of any
    # parameter (the reducer's stored parameters): refused there too, not applied.
    with pytest.raises(ValueError, match="more than 2x the detector width"):
        outside.reconfigure(dataclasses.replace(outside.config, slice_size=1000))


def test_rows_labelled_with_an_earlier_scans_references_are_recorrected() -> None:
    frames = make_frames(seed=1)
    cfg = config()
    first = run(frames, 1, cfg)
    old = run(make_frames(seed=2), 1, cfg).references.current  # other darks: another set
    assert old is not None
    # A new scan (new reducer) whose worker still holds the earlier scan's references.
    scan = LiveScan(cfg)
    scan.remember_references(old, applicable=False)
    worker = FrameProcessor(cfg)
    worker.set_references(old)
    for frame in frames:
        scan.add_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    scan.finish()
    assert scan.references.current is not None
    assert scan.references.current.version != old.version
    assert scan.counts["recorrected_stale"] == ANGLES
    np.testing.assert_allclose(scan.sinogram.data, first.sinogram.data, atol=1e-4)  # type: ignore[union-attr]


def test_frames_received_counts_each_frame_once() -> None:
    frames = [f for f in make_frames() if f.key != ImageKey.FLAT]
    scan = run(frames, 2, config(n_flats_before=0))
    assert scan.rejected["no_references"] == ANGLES
    assert scan.status()["frames_received"] == len(frames)


def test_kept_references_never_outrank_this_scans_own() -> None:
    frames = make_frames(seed=1)
    cfg = config(keep_references=True)
    earlier = run(make_frames(seed=2), 1, cfg).references.current
    assert earlier is not None
    # Even with a larger version number, an earlier scan's set loses to this scan's.
    earlier = ReferenceSet(10**15, earlier.dark, earlier.flat, earlier.before_index)
    scan = LiveScan(cfg)
    scan.remember_references(earlier, applicable=True)
    worker = FrameProcessor(cfg)
    for frame in frames:
        scan.add_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    scan.finish()
    alone = run(frames, 1, config())
    np.testing.assert_array_equal(scan.sinogram.data, alone.sinogram.data)  # type: ignore[union-attr]
    # Without references of its own, the scan uses the kept set.
    projections_only = [
        Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(f for f in frames if f.key == ImageKey.PROJECTION)
    ]
    reuse = LiveScan(config(keep_references=True, n_darks_before=0, n_flats_before=0))
    reuse.remember_references(earlier, applicable=True)
    for frame in projections_only:
        reuse.add_result(
            WorkerResult(
                list(FrameProcessor(reuse.config).process(frame.index, frame.key, frame.data, frame.angle_deg))
            )
        )
    reuse.finish()
    assert reuse.status()["projections"] == ANGLES
    assert not reuse.rejected


def _kept_from(frames: list[Frame], cfg: PipelineConfig) -> ReferenceSet:
    """The set a reducer keeps for the next scan: tagged with where it lies (as
    TomoReducer._share_references does)."""
    earlier = run(frames, 1, cfg)
    assert earlier.references.current is not None
    return dataclasses.replace(earlier.references.current, footprint=earlier.reference_footprint())


def _with_kept(frames: list[Frame], cfg: PipelineConfig, kept: ReferenceSet) -> LiveScan:
    shared: dict[str, ReferenceSet] = {}
    scan = LiveScan(cfg, on_references=lambda refs: shared.__setitem__("refs", refs))
    scan.remember_references(kept, applicable=True)
    worker = FrameProcessor(cfg)
    for frame in frames:
        worker.set_references(shared.get("refs"))
        scan.add_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    scan.finish()
    return scan


@pytest.mark.parametrize("lacking", [ImageKey.DARK, ImageKey.FLAT])
def test_a_first_batch_of_one_kind_takes_the_other_from_the_kept_set(lacking: ImageKey) -> None:
    """keep_references, and a scan that takes flats alone (or darks alone): the kept
    scan's darks (flats) stand in. Flats alone took zero darks, every projection
    -log(p/f) without a word (0.64 off in the sinogram at a dark of 2000 counts); darks
    alone were ignored for the kept set. Workers cannot build that set (they do not
    hold the kept one), so they send raw rows until the reducer's set reaches them."""
    frames, earlier_frames = make_frames(seed=1), make_frames(seed=2)  # another dark, so another flat
    earlier = run(earlier_frames, 1, config()).references.current
    assert earlier is not None
    # The truth: this scan's frames with the earlier scan's darks (flats) in front.
    borrowed = [f for f in earlier_frames if f.key == lacking]
    mixed = sorted(
        [*borrowed, *(f for f in frames if f.key != lacking)], key=lambda f: (f.key != ImageKey.DARK, f.index)
    )
    whole = run([Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(mixed)], 1, config())
    counts = {"n_darks_before": 0} if lacking == ImageKey.DARK else {"n_flats_before": 0}
    cfg = config(keep_references=True, **counts)
    one_kind = [Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(f for f in frames if f.key != lacking)]
    scan = _with_kept(one_kind, cfg, earlier)
    np.testing.assert_allclose(scan.sinogram.data, whole.sinogram.data, atol=1e-6)  # type: ignore[union-attr]
    assert not scan.rejected
    assert scan.counts.get("corrected_by_reducer", 0) >= 1  # the first projection, before the set was shared
    status = scan.status()
    assert (status["projections"], status["darks"] + status["flats"]) == (ANGLES, 3)


def test_a_kept_set_of_other_detector_rows_is_not_used() -> None:
    """Rows 0:2 kept, rows 2:4 now, the same shape: the other rows' darks corrected
    every projection of a scan of flats alone (0.72 off in a review's probe), unsaid."""
    frames = make_frames(seed=1)
    kept = _kept_from(frames, config(rows="0:2"))
    flats_only = [
        Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(f for f in frames if f.key != ImageKey.DARK)
    ]
    scan = _with_kept(flats_only, config(rows="2:4", keep_references=True, n_darks_before=0), kept)
    alone = run(flats_only, 1, config(rows="2:4", n_darks_before=0))  # nothing kept: no darks
    assert scan.rejected == {"kept_references_unfit": 1}
    assert scan.sinogram is not None and alone.sinogram is not None
    np.testing.assert_array_equal(scan.sinogram.data, alone.sinogram.data)
    # The same rows: kept and used.
    used = _with_kept(flats_only, config(rows="0:2", keep_references=True, n_darks_before=0), kept)
    assert not used.rejected and used.references.current is not None
    np.testing.assert_array_equal(used.references.current.dark, kept.dark)


def test_a_kept_set_of_another_shape_fails_no_scan_of_darks_alone() -> None:
    """Darks alone and a kept set of two rows where the scan has four: every projection
    raised 'frame shape (4, 32) does not match references (2, 32)' (an ERROR in the
    reducer each). The kept set is said unfit, and the projections have no flats."""
    frames = make_frames(seed=1)
    kept = _kept_from(frames, config(rows="0:2"))
    darks_only = [
        Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(f for f in frames if f.key != ImageKey.FLAT)
    ]
    scan = _with_kept(darks_only, config(keep_references=True, n_flats_before=0), kept)
    assert scan.rejected == {"kept_references_unfit": 1, "no_references": ANGLES}


def test_a_worker_corrects_with_no_set_of_other_detector_rows(caplog: pytest.LogCaptureFixture) -> None:
    """Replay shares one parameter dict: workers took the kept set the reducer had
    refused (rows 4:8 kept, 0:4 now, one shape) and corrected with the other rows'
    darks (0.76 off, where clipped pixels could not be undone). A worker now sends raw
    rows for a set that lies elsewhere, and says so once."""
    frames = make_frames(seed=1)
    kept = _kept_from(frames, config(rows="0:2"))
    cfg = config(rows="2:4", keep_references=True, n_darks_before=0)
    worker = FrameProcessor(cfg)
    worker.set_references(kept)
    projections = [f for f in frames if f.key == ImageKey.PROJECTION][:3]
    rows = [m for f in projections for m in worker.process(f.index, f.key, f.data, f.angle_deg)]
    assert [m.reference_version for m in rows if isinstance(m, ProjectionRows)] == [0, 0, 0]
    assert caplog.text.count("ignoring them") == 1
    # The same rows: used.
    here = FrameProcessor(config(rows="0:2", keep_references=True, n_darks_before=0))
    here.set_references(kept)
    made = here.process(projections[0].index, projections[0].key, projections[0].data, projections[0].angle_deg)
    assert [m.reference_version for m in made if isinstance(m, ProjectionRows)] == [kept.version]


def test_a_worker_given_a_set_of_other_rows_corrects_with_its_own() -> None:
    """A shared set of other rows (one the controller kept, posted by no play) was
    ignored, and every row went raw to the reducer (36 of 36 in a review's probe) though
    the worker had built this scan's set from its broadcast darks and flats."""
    frames = make_frames(seed=1)
    stale = _kept_from(frames, config(rows="0:2"))
    cfg = config(rows="2:4")
    worker = FrameProcessor(cfg)
    worker.set_references(stale)
    made = [m for f in frames for m in worker.process(f.index, f.key, f.data, f.angle_deg)]
    versions = {m.reference_version for m in made if isinstance(m, ProjectionRows)}
    own = run(frames, 1, cfg).references.current
    assert own is not None and versions == {own.version}


def test_a_scan_with_its_own_darks_and_flats_first_says_nothing_of_an_unfit_kept_set() -> None:
    """keep_references left on and rows changed: every scan that takes its own darks and
    flats before its projections (and so never uses the kept set) had the notice."""
    frames = make_frames(seed=1)
    kept = _kept_from(frames, config(rows="0:2"))
    scan = _with_kept(frames, config(rows="2:4", keep_references=True), kept)
    assert not scan.rejected and scan.status()["projections"] == ANGLES


def test_darks_after_a_scan_on_kept_darks_say_which_darks_correct_it(caplog: pytest.LogCaptureFixture) -> None:
    """Flats retaken mid-scan, darks after, none before but the kept ones: the WARNING
    said the projections were corrected without darks; the kept darks corrected them."""
    frames, _ = flats_retaken()
    frames = noisy_references(frames)
    body = [f for f in frames if f.key != ImageKey.DARK]
    darks = [f for f in frames if f.key == ImageKey.DARK]
    renumbered = [Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(body + darks)]
    kept = _kept_from(make_frames(seed=2), config())
    scan = _with_kept(renumbered, config(kind_rule="header", keep_references=True), kept)
    assert scan.counts["darks_after_unused"] == len(darks)
    assert "the projections are corrected with the darks kept from an earlier scan" in caplog.text
    assert "corrected without darks" not in caplog.text


def full_turn() -> list[Frame]:
    """A continuous rotation over 360 degrees, in order: the window holds the last 180."""
    return [
        Frame(f.index, f.key, f.data, (f.angle_deg or 0.0) * 2 if f.key == ImageKey.PROJECTION else f.angle_deg)
        for f in make_frames()
    ]


def window_scan(frames: list[Frame], cfg: PipelineConfig) -> LiveScan:
    """``frames`` through one worker, its last partial sum sent (as a tick does) and reconciled."""
    shared: dict[str, ReferenceSet] = {}
    scan = LiveScan(cfg, on_references=lambda r: shared.__setitem__("r", r))
    worker = FrameProcessor(cfg)
    for frame in frames:
        worker.set_references(shared.get("r"))
        scan.add_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    flushed = worker.flush()  # what a worker's tick sends
    if flushed is not None:
        scan.add_result(WorkerResult([flushed]))
    scan.reconcile()
    return scan


@pytest.mark.parametrize("block", [1, 4])
def test_window_mode_shows_the_last_half_turn_then_everything(block: int) -> None:
    turn = full_turn()
    scan = window_scan(turn, config(live_mode="window", angle_range=360.0, window_block=block))
    live = scan.slices()
    assert scan.sinogram is not None and scan.geometry is not None
    projections = [f for f in turn if f.key == ImageKey.PROJECTION]
    newest = projections[-1]
    # Block 1: taken less than 180 degrees before the newest projection (as tomostream
    # subtracts); larger blocks: the whole blocks of frames within that half turn.
    inside = [f for f in projections if (f.angle_deg or 0.0) > (newest.angle_deg or 0.0) - 180.0 + 1e-6]
    first_block = -(-inside[0].index // block)
    shown = [f for f in inside if f.index >= first_block * block]
    assert len(shown) == (len(inside) if block == 1 else len(inside) - (-inside[0].index) % block)
    window_slots = [scan.sinogram.grid.slot(f.angle_deg or 0.0) for f in shown]
    half = fbp(
        scan.sinogram.data[scan.geometry.slice_positions][:, window_slots],
        scan.sinogram.angles()[window_slots],
        scan.geometry.center,
    )
    assert rel(live, half) < 1e-4  # type: ignore[arg-type]
    scan.finish()
    assert rel(scan.slices(), offline(scan)) < 1e-4  # type: ignore[arg-type]


def test_window_mode_publishes_the_count_its_slices_are_weighted_with() -> None:
    """n_projections said every projection so far (36) of slices weighted as the window's
    (18): README has it as the count the published slices are weighted with."""
    scan = window_scan(full_turn(), config(live_mode="window", angle_range=360.0, window_block=4))
    snap = scan.snapshot()
    assert snap.slices_sum is not None and scan.state == "running"
    window = round(np.pi / (2 * snap.slices_weight))
    assert snap.n_projections == window < scan.n_projections
    scan.finish()
    final = scan.snapshot()
    assert final.n_projections == scan.n_projections == ANGLES  # the end: every projection


def test_a_settings_change_in_window_mode_rebuilds_the_window_blocks_only() -> None:
    def window_config(center: str) -> PipelineConfig:
        return config(live_mode="window", angle_range=360.0, window_block=2, center=center)

    scan = window_scan(full_turn(), window_config(""))
    scan.reconfigure(window_config("15.0"))
    assert scan.ledger is not None
    window = scan.ledger.window_blocks()
    assert window is not None and window[0] > 0
    # The backfill placed every frame of the turn; only the window's blocks got sums.
    assert min(scan.ledger.blocks) == window[0] and max(scan.ledger.blocks) == window[1]
    # The window is still the half turn, now with the new centre.
    assert rel(scan.slices(), window_scan(full_turn(), window_config("15.0")).slices()) < 1e-5  # type: ignore[arg-type]


@pytest.mark.parametrize(("workers", "drop_last_partials", "fixed_here"), [(1, False, False), (3, True, True)])
@pytest.mark.parametrize("center", ["", "14.3"])
def test_final_sweep_is_the_sinograms_sweep(
    workers: int, drop_last_partials: bool, fixed_here: bool, center: str
) -> None:
    # Workers sum the sweep; the ledger keeps it exact like the slices: with one worker
    # that saw every dark and flat (it corrected every projection itself) the reducer
    # backprojects nothing; with raw rows and lost sums it mends them, sweep included.
    # The candidates are seen from the live centre (the detector middle, or not).
    cfg = config(center=center)
    scan = run(make_frames(), workers, cfg, seed=3, shuffle=True, drop_last_partials=drop_last_partials)
    assert (scan.counts["backprojected_here"] > 0) == fixed_here
    assert scan.sinogram is not None and scan.geometry is not None
    filled = scan.sinogram.filled_slots()
    row = scan.sinogram.data[scan.geometry.sweep_position][filled]
    assert scan.geometry.center == (14.3 if center else (COLS - 1) / 2)
    exact = cor_sweep(
        row,
        scan.sinogram.angles()[filled],
        scan.geometry.sweep_centers,
        "ramp",
        scan.geometry.size,
        backend="direct",
        reference=scan.geometry.center,
    )
    assert rel(scan.sweep_slices(), exact) < 1e-4  # type: ignore[arg-type]


def test_the_same_darks_and_flats_again_are_this_scans_own() -> None:
    # A recording replayed twice: the second scan's set has the earlier set's version
    # (a digest of the content) and must still apply to the second scan.
    frames = make_frames()
    earlier = run(frames, 1, config()).references.current
    assert earlier is not None
    scan = LiveScan(config())
    scan.remember_references(earlier, applicable=False)
    worker = FrameProcessor(config())
    for frame in frames:
        scan.add_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    scan.finish()
    assert scan.references.current is not None and scan.references.current.version == earlier.version
    assert scan.status()["projections"] == ANGLES and not scan.rejected


def test_a_scan_too_large_for_the_memory_budget_is_refused_at_its_first_frame() -> None:
    cfg = config(memory_budget_gb=1e-9)
    scan = run(make_frames(), 2, cfg)
    assert scan.state == "failed"
    assert "rows" in scan.reason and "bin" in scan.reason and "memory_budget_gb" in scan.reason
    # Sizes in a unit that shows them (a 1-byte budget read "0.00 GB" like the need).
    assert "budget of 1 bytes" in scan.reason and "0.00" not in scan.reason, scan.reason
    assert scan.sinogram is None  # nothing was allocated
    assert scan.rejected == {"scan_refused": len(make_frames())}
    assert scan.status()["frames_received"] == len(make_frames())


def test_the_budget_counts_the_volumes_prepared_copy_for_zingers_or_paganin() -> None:
    """Zinger removal and Paganin make a whole copy of the sinogram for the volume: a scan
    admitted without it ran out of memory at its very end."""
    from streamtomo.pipeline.streaming.live_geometry import LiveSliceGeometry
    from streamtomo.pipeline.streaming.memory_budget import held_bytes, published_bytes

    detector = DetectorInfo(rows=ROWS, cols=COLS, dtype="uint16")
    for extra, copied in (({}, False), ({"zinger_removal": True}, True), ({"paganin_delta_beta": 100.0}, True)):
        cfg = config(volume=True, **extra)
        geometry = LiveSliceGeometry(cfg, detector)
        held, published = held_bytes(cfg, detector, geometry), published_bytes(cfg, detector, geometry)
        assert sum(held.values()) - sum(published.values()) == (published["sinogram"] if copied else 0), extra
    # ... and the refusal says it: between the two totals, only the copy makes it too large.
    cfg = config(volume=True, zinger_removal=True)
    geometry = LiveSliceGeometry(cfg, detector)
    published = sum(published_bytes(cfg, detector, geometry).values())
    scan = run(make_frames(), 2, dataclasses.replace(cfg, memory_budget_gb=(published + 1) / 1e9))
    assert scan.state == "failed" and "volume preparation" in scan.reason and "zinger_removal" in scan.reason


def test_rows_outside_the_binned_detector_refuse_the_scan_in_words() -> None:
    """Rows that fit the detector but not the binned one raised ConfigError in the worker,
    then an AssertionError on every frame after it (a replay: a traceback, exit 2)."""
    cfg = config(bin=2, rows=f"{ROWS - 1}:{ROWS}")  # binned: ROWS // 2 rows
    worker = FrameProcessor(cfg, "w0")
    frame = make_frames()[0]
    (rejected,) = worker.process(frame.index, frame.key, frame.data, frame.angle_deg)
    assert isinstance(rejected, Rejected) and rejected.reason == "scan_refused"
    assert f"do not fit a {ROWS // 2} x {COLS // 2} detector (after bin 2)" in rejected.detail
    # ... and again for the next frame, not an AssertionError
    (again,) = worker.process(frame.index + 1, frame.key, frame.data, frame.angle_deg)
    assert isinstance(again, Rejected) and again.reason == "scan_refused"
    scan = LiveScan(cfg)
    scan._settle_detector(DetectorInfo(ROWS // 2, COLS // 2, "uint16"))  # as the reducer would at a frame
    assert scan.state == "failed" and "after bin 2" in scan.reason


def test_binned_scan_is_the_scan_of_the_binned_detector() -> None:
    frames = make_frames()
    binned = [Frame(f.index, f.key, bin_frame(f.data, 2), f.angle_deg) for f in frames]
    scan = run(frames, 2, config(bin=2))
    reference = run(binned, 2, config())
    assert scan.sinogram is not None and reference.sinogram is not None
    assert scan.sinogram.data.shape == (ROWS // 2, ANGLES, COLS // 2)
    assert scan.sinogram.data.dtype == np.float32
    np.testing.assert_array_equal(scan.sinogram.data, reference.sinogram.data)
    assert rel(scan.slices(), reference.slices()) < 1e-6  # type: ignore[arg-type]


def test_integer_binning_keeps_the_dtype_and_rounds_the_block_mean() -> None:
    data = np.arange(4 * 6, dtype=np.uint16).reshape(4, 6)
    out = bin_frame(data, 2)
    assert out.dtype == np.uint16 and out.shape == (2, 3)
    expected = np.rint(data.reshape(2, 2, 3, 2).mean(axis=(1, 3)) + 1e-9).astype(np.uint16)
    np.testing.assert_array_equal(out, expected)
    assert bin_frame(data.astype(np.float32), 4).shape == (1, 1)


def _broadcast_run(
    cfg: PipelineConfig, frames: list[Frame], workers: list[FrameProcessor], finish: bool = True
) -> tuple[LiveScan, dict[str, list[ReferenceSet]]]:
    """Distributed-mode routing: darks and flats to every worker, projections round robin;
    what the reducer would share (closed sets) and when a worker lacked a set, recorded."""
    seen: dict[str, list[ReferenceSet]] = {"closed": [], "lacking": []}
    scan = LiveScan(cfg, on_references=seen["closed"].append, on_references_lacking=seen["lacking"].append)
    projection = 0
    for frame in frames:
        chosen = workers if frame.key != ImageKey.PROJECTION else [workers[projection % len(workers)]]
        projection += frame.key == ImageKey.PROJECTION
        for worker in chosen:
            scan.add_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    if finish:
        scan.finish()
    return scan, seen


def test_workers_that_saw_the_broadcast_never_lack_the_reducers_set() -> None:
    cfg = config()
    frames = make_frames()
    scan, seen = _broadcast_run(cfg, frames, [FrameProcessor(cfg, f"w{i}") for i in range(3)])
    (closed,) = seen["closed"]
    assert built_by_workers(cfg, closed, "uint16")  # so the reducer need not post it
    assert seen["lacking"] == []
    assert scan.counts.get("corrected_by_reducer", 0) == scan.counts.get("recorrected_stale", 0) == 0


def test_a_worker_that_missed_the_broadcast_shows_it_lacks_the_set() -> None:
    cfg = config()
    frames = make_frames()
    late = FrameProcessor(cfg, "late")
    scan, seen = _broadcast_run(cfg, frames[:6], [FrameProcessor(cfg, "w0")], finish=False)  # darks and flats
    # A worker started after the broadcast (a replacement): its projections come raw.
    for frame in frames[6:9]:
        scan.add_result(WorkerResult(list(late.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    (closed,) = seen["closed"]
    assert seen["lacking"] and all(r.version == closed.version for r in seen["lacking"])
    assert scan.counts["corrected_by_reducer"] == 3


def test_sets_workers_do_not_build_are_not_taken_for_theirs() -> None:
    first = run(make_frames(), 1, config()).references.current
    interpolated = run(make_frames(flats_after=3), 1, config(n_flats_after=3)).references.current
    assert first is not None and interpolated is not None and interpolated.flat_after is not None
    assert built_by_workers(config(), first, "uint16")
    assert not built_by_workers(config(kind_rule="header"), first, "uint16")  # no first batch known to workers
    assert not built_by_workers(config(), first, "float32")  # float sums depend on their order
    assert not built_by_workers(config(n_flats_after=3), interpolated, "uint16")  # the reducer's at the end
    assert not built_by_workers(config(n_darks_before=4), first, "uint16")  # not the batch workers expect


def test_darks_and_flats_filed_under_the_wrong_kind_are_noticed() -> None:
    from streamtomo.pipeline.streaming.scan_end import misfiled_references_notice

    dark, flat = ImageKey.DARK, ImageKey.FLAT
    clean = [(dark, 0, 100.0), (dark, 1, 101.0), (flat, 2, 20000.0), (flat, 3, 19800.0)]
    assert misfiled_references_notice(clean, None) == ""
    shifted = [(dark, 0, 100.0), (dark, 1, 20100.0), (flat, 2, 20000.0), (flat, 3, 9000.0)]
    text = misfiled_references_notice(shifted, None)
    assert "dark frame(s) [1] as bright as the flats" in text and "flat frame(s) [3] as dim as the darks" in text
    assert "frame_base 'auto'" in text
    assert "frame_base 1 may not be" in misfiled_references_notice(shifted, 1)
    assert misfiled_references_notice([(dark, 0, 100.0)], None) == ""  # no flats: nothing to compare
    swapped = [(dark, 0, 20000.0), (flat, 1, 100.0)]  # unusable_references says that one
    assert misfiled_references_notice(swapped, None) == ""


def noisy_references(frames: list[Frame], seed: int = 5) -> list[Frame]:
    """Each dark and flat with its own noise: a set lacking one of them is another set
    (make_frames' references are alike, so any subset has the same mean)."""
    rng = np.random.default_rng(seed)
    return [
        Frame(f.index, f.key, (f.data + rng.integers(0, 50, f.data.shape)).astype(np.uint16), f.angle_deg)
        if f.key != ImageKey.PROJECTION
        else f
        for f in frames
    ]


def _broadcast_late(
    frames: list[Frame], late: int, after: int | None, cfg: PipelineConfig | None = None
) -> tuple[LiveScan, list[ReferenceSet]]:
    """:func:`_broadcast_run` with 3 workers whose results for frame ``late`` reach the
    reducer only after frame ``after`` (None: never). The sets the reducer gives the
    workers, by TomoReducer._share_references' rule or because one lacked it
    (``on_references_lacking``), they take from their next frame."""
    cfg = cfg or config()
    workers = [FrameProcessor(cfg, f"w{i}") for i in range(3)]
    given: list[ReferenceSet] = []

    def share(refs: ReferenceSet) -> None:  # TomoReducer._share_references with a controller
        if not given and (
            built_by_workers(cfg, refs, "uint16")
            or (scan.missing_references and first_batch_of_workers(cfg, refs, "uint16"))
        ):
            return
        given.append(refs)

    scan = LiveScan(cfg, on_references=share, on_references_lacking=given.append)
    held: list[WorkerResult] = []
    projection = 0
    for frame in frames:
        chosen = workers if frame.key != ImageKey.PROJECTION else [workers[projection % len(workers)]]
        projection += frame.key == ImageKey.PROJECTION
        for worker in chosen:
            worker.set_references(given[-1] if given else None)
            result = WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg)))
            (held.append if frame.index == late else scan.add_result)(result)
        if frame.index == after:
            for result in held:
                scan.add_result(result)
    scan.finish()
    return scan, given


@pytest.mark.parametrize("late", [0, 4, 5])  # the batch's first frame, a flat inside it, its last frame
@pytest.mark.parametrize("after", [40, 41])  # the 35th projection; the last one (then the scan ends)
def test_a_first_batch_frame_that_comes_after_the_wait_bound_joins_its_batch(late: int, after: int) -> None:
    """Every worker saw the broadcast darks and flats and built the whole set; the
    reducer got one of them only after more projections than may wait. It closed the
    batch without it, then rejected every projection as corrected with a set it never
    made (the scan failed), and the late frame became a batch of its own (or flats after
    the projections, interpolated)."""
    frames = noisy_references(make_frames())
    in_order, _ = _broadcast_late(frames, late=-1, after=None)
    scan, given = _broadcast_late(frames, late=late, after=after)
    assert scan.state == "finished" and scan.status()["projections"] == ANGLES and not scan.rejected
    assert scan.sinogram is not None and in_order.sinogram is not None
    np.testing.assert_array_equal(scan.sinogram.data, in_order.sinogram.data)
    assert given == []  # the workers' own set was the whole one: nothing to give them
    assert "flats_interpolated" not in scan.counts
    assert scan.counts["references_closed_incomplete"] == 1 and scan.counts["references_came_late"] == 1


def test_a_first_batch_frame_lost_on_its_way_to_the_reducer_costs_a_bound_of_projections_not_the_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The workers built the whole set, the reducer never gets one of its flats: the
    projections the workers corrected with it cannot be undone here. Past the bound they
    are rejected and the workers are given the reducer's set, so the rest are placed."""
    monkeypatch.setattr(LiveScan, "_wait_bound", lambda self: 8)
    frames = noisy_references(make_frames())
    scan, given = _broadcast_late(frames, late=4, after=None)
    assert scan.state == "finished"
    assert [refs.version for refs in given] == [scan.references.current.version]  # type: ignore[union-attr]
    rejected = scan.rejected["unknown_references"]
    assert 0 < rejected < ANGLES and scan.status()["projections"] == ANGLES - rejected
    assert scan.counts["references_never_came"] == 1


def test_projections_placed_with_a_batch_lacking_a_frame_are_corrected_again_when_it_comes() -> None:
    """Workers that do not build the set (the header rule) correct with the reducer's:
    the one lacking the late flat, until it comes. The projections placed with it are
    corrected again then, as if the flat had come in time."""
    frames = noisy_references(make_frames())
    cfg = config(kind_rule="header")

    def scan_with_flat_after(after: int) -> LiveScan:
        shared: dict[str, ReferenceSet] = {}
        scan = LiveScan(cfg, on_references=lambda refs: shared.__setitem__("refs", refs))
        worker = FrameProcessor(cfg, "w0")
        held: list[WorkerResult] = []
        for frame in frames:
            worker.set_references(shared.get("refs"))
            result = WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg)))
            (held.append if frame.index == 4 else scan.add_result)(result)
            if frame.index == after:
                for result in held:
                    scan.add_result(result)
        scan.finish()
        return scan

    in_time, late = scan_with_flat_after(4), scan_with_flat_after(len(frames) - 2)
    assert late.status()["projections"] == ANGLES
    assert late.sinogram is not None and in_time.sinogram is not None
    np.testing.assert_allclose(late.sinogram.data, in_time.sinogram.data, atol=1e-5)
    final, reference = late.slices(), in_time.slices()
    assert final is not None and reference is not None
    assert rel(final, reference) < 1e-4  # the final slices are the FBP of the corrected sinogram
    assert late.counts["references_came_late"] == 1


def _late_in_order(
    frames: list[Frame], cfg: PipelineConfig, late: int, after: int, made_with: PipelineConfig | None = None
) -> LiveScan:
    """One worker in stream order, the reducer's sets shared with it; the result of frame
    ``late`` reaches the reducer right after frame ``after``. ``made_with``: the scan was
    made with these settings, and given ``cfg`` before its first frame."""
    shared: dict[str, ReferenceSet] = {}
    scan = LiveScan(made_with or cfg, on_references=lambda refs: shared.__setitem__("refs", refs))
    scan.reconfigure(cfg)
    worker = FrameProcessor(cfg, "w0")
    held: list[WorkerResult] = []
    for frame in frames:
        worker.set_references(shared.get("refs"))
        result = WorkerResult(
            list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg, frame.index + 1))
        )
        (held.append if frame.index == late else scan.add_result)(result)
        if frame.index == after:
            for result in held:
                scan.add_result(result)
    scan.finish()
    return scan


def test_the_one_flat_of_a_batch_that_made_no_set_yet_is_kept_when_it_comes_late() -> None:
    """A batch of darks alone makes no set and stays open: it recorded the flat as
    missing, and the flat, when it came, was dropped (every projection no_references)."""
    frames = noisy_references(make_frames(n_flats=1))
    cfg = config(n_flats_before=1, kind_rule="header")
    late, in_time = _late_in_order(frames, cfg, late=3, after=38), _late_in_order(frames, cfg, late=-1, after=-1)
    assert late.state == "finished" and late.status()["projections"] == ANGLES and not late.rejected
    assert late.sinogram is not None and in_time.sinogram is not None
    np.testing.assert_allclose(late.sinogram.data, in_time.sinogram.data, atol=1e-6)


def test_a_lost_projection_before_the_first_darks_and_flats_holds_back_no_other() -> None:
    """kind_rule header, projections first, then the darks and flats: the first batch's
    completeness counted from frame 0, so a lost projection 5 held every projection
    until the scan's end (no live products)."""
    base = make_frames()
    frames = [Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(base[6:24] + base[:6] + base[24:])]
    cfg = config(kind_rule="header")
    scan = LiveScan(cfg)
    worker = FrameProcessor(cfg, "w0")
    for frame in frames:
        items = worker.process(frame.index, frame.key, frame.data, frame.angle_deg, frame.index + 1)
        scan.add_result(WorkerResult([item for item in items if getattr(item, "frame_index", None) != 5]))
    assert scan.n_projections == ANGLES - 1  # placed while the scan runs


def test_a_late_first_projection_is_no_missing_dark_or_flat(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frame 6, the first projection, came late; every dark and flat was on time. It was
    taken for a missing reference: 'never came', and the workers' own set posted."""
    monkeypatch.setattr(LiveScan, "_wait_bound", lambda self: 8)
    scan, given = _broadcast_late(noisy_references(make_frames()), late=6, after=30)
    assert scan.status()["projections"] == ANGLES and not scan.rejected
    assert given == [] and "references_never_came" not in scan.counts


def test_a_dark_or_flat_that_comes_after_the_wait_for_it_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the second bound the projections go on with the set lacking the flat. When
    it came even so, the set was made again with it, and the later slots were corrected
    with another flat field than the earlier ones: now it is rejected, and the scan is
    the scan without it."""
    monkeypatch.setattr(LiveScan, "_wait_bound", lambda self: 8)
    frames = noisy_references(make_frames())
    lost, _ = _broadcast_late(frames, late=4, after=None)
    came, _ = _broadcast_late(frames, late=4, after=34)
    assert came.rejected["reference_too_late"] == 1
    assert came.status()["frames_received"] == lost.status()["frames_received"] + 1
    assert came.sinogram is not None and lost.sinogram is not None
    np.testing.assert_array_equal(came.sinogram.data, lost.sinogram.data)
    assert came.references.tracker._incomplete is None  # its float64 sums went with the wait


def test_the_wait_for_a_late_first_batch_frame_outlasts_the_next_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flats retaken after 40 projections closed while the first batch still waited for
    its flat 4: the wait ended there, 41 projections were rejected as unknown_references,
    and the flat, when it came, became a batch of its own."""
    monkeypatch.setattr(sys.modules[__name__], "ANGLES", 100)
    frames, _ = flats_retaken(after=40)
    frames = noisy_references(frames)
    cfg = config(n_projections=100, kind_rule="header")
    in_order, _ = _broadcast_late(frames, late=-1, after=None, cfg=cfg)
    scan, _ = _broadcast_late(frames, late=4, after=55, cfg=cfg)
    assert scan.status()["projections"] == 100 and not scan.rejected
    assert scan.sinogram is not None and in_order.sinogram is not None
    np.testing.assert_allclose(scan.sinogram.data, in_order.sinogram.data, atol=1e-6)


@pytest.mark.parametrize("kind_rule", ["counts", "header"])
def test_darks_after_the_projections_correct_a_scan_that_had_none_before(kind_rule: str) -> None:
    """Flats, projections, then darks: the darks were counted but used by nothing, and
    every projection was -log(p/f) where -log((p-d)/(f-d)) was due (0.024 off on the
    APS tooth so laid out)."""
    base = make_frames()
    darks = [f for f in base if f.key == ImageKey.DARK]
    rest = [f for f in base if f.key != ImageKey.DARK] + darks
    frames = [Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(rest)]
    cfg = config(n_darks_before=0, n_darks_after=3, kind_rule=kind_rule)
    scan = run(frames, 2, cfg, drop_last_partials=False)
    dark = np.mean([f.data.astype(np.float64) for f in darks], axis=0)
    flat = np.mean([f.data.astype(np.float64) for f in base if f.key == ImageKey.FLAT], axis=0)
    projections = np.stack([f.data.astype(np.float64) for f in base if f.key == ImageKey.PROJECTION], axis=1)
    expected = -np.log((projections - dark[:, None]) / (flat - dark)[:, None])
    assert scan.sinogram is not None and scan.status()["projections"] == ANGLES
    np.testing.assert_allclose(scan.sinogram.data, expected, atol=1e-3)
    assert scan.counts["darks_after_used"] == 1 and "flats_interpolated" not in scan.counts
    final, offline_slices = scan.slices(), offline(scan)
    assert final is not None and rel(final, offline_slices) < 1e-4


def test_a_binning_that_leaves_no_pixel_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """bin 4 of a 2-row detector: every frame was 'wrong_shape: frame 0 has shape (0, 0)'
    (the binning unsaid). One such frame in a good scan is one frame of the wrong shape."""
    frames = [Frame(f.index, f.key, f.data[:2], f.angle_deg) for f in make_frames()]
    scan = run(frames, 1, config(bin=4))
    assert scan.state == "failed" and set(scan.rejected) == {"wrong_shape"}
    assert any("bin 4 leaves no pixel of a 2 x 32 frame" in r.getMessage() for r in caplog.records)
    good = make_frames()
    good[20] = Frame(20, good[20].key, good[20].data[:1], good[20].angle_deg)
    one = run(good, 1, config(bin=2))
    assert one.state == "finished" and one.rejected == {"wrong_shape": 1}


def test_the_first_flat_of_a_batch_retaken_mid_scan_joins_it_when_it_comes_late() -> None:
    """kind_rule header, flats retaken mid-scan, the first of them a projection late:
    the batch started at the second flat, was complete without the first, and the first
    became a batch of its own (6.2e-4 off in the sinogram, and shared with the workers)."""
    frames, half = flats_retaken()
    frames = noisy_references(frames)
    cfg = config(kind_rule="header")
    in_time = _late_in_order(frames, cfg, late=-1, after=-1)
    late = _late_in_order(frames, cfg, late=half, after=half + 4)
    assert late.status()["projections"] == ANGLES and not late.rejected
    assert late.sinogram is not None and in_time.sinogram is not None
    np.testing.assert_allclose(late.sinogram.data, in_time.sinogram.data, atol=1e-5)
    assert len(late.references._ordinal) == 2  # the two batches, no third


def test_a_layout_changed_before_the_first_frame_is_the_one_late_frames_are_judged_by(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The layout was taken when the scan was made: 3 flats, then 10 set before the first
    frame. Flat 11, late, was a projection by the old layout: it became a batch of its
    own and the sinogram was 1.96 off."""
    monkeypatch.setattr(LiveScan, "_wait_bound", lambda self: 8)
    frames = noisy_references(make_frames(n_flats=10))
    cfg = config(n_flats_before=10)
    in_time = _late_in_order(frames, cfg, late=-1, after=-1)
    late = _late_in_order(frames, cfg, late=11, after=24, made_with=config())
    assert late.status()["projections"] == ANGLES and not late.rejected
    assert late.sinogram is not None and in_time.sinogram is not None
    np.testing.assert_allclose(late.sinogram.data, in_time.sinogram.data, atol=1e-6)


def test_a_late_dark_a_newer_batch_took_over_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flats retaken after 10 projections took their dark from the first batch's set,
    which lacked dark 1, still on its way. When it came only the first set was made
    again: the later slots kept the lacking dark (1e-3 to 2.4e-3 off). It now counts as
    come too late: the scan is the scan without it."""
    monkeypatch.setattr(LiveScan, "_wait_bound", lambda self: 8)
    frames, _ = flats_retaken(after=10)
    frames = noisy_references(frames)
    cfg = config(kind_rule="header")
    late = _late_in_order(frames, cfg, late=1, after=21)
    lost = _late_in_order(frames, cfg, late=1, after=-1)
    assert late.rejected == {"reference_too_late": 1} and late.status()["projections"] == ANGLES
    assert late.sinogram is not None and lost.sinogram is not None
    np.testing.assert_array_equal(late.sinogram.data, lost.sinogram.data)


def test_darks_after_a_scan_whose_flats_were_retaken_are_said_unused() -> None:
    """Flats, projections, flats retaken, projections, darks: every slot was undone with
    the newer flat and redone with it and the darks, the earlier half 0.0069 off. The
    darks are now left out, said, and each half keeps its own flats."""
    frames, _ = flats_retaken()
    frames = noisy_references(frames)
    body = [f for f in frames if f.key != ImageKey.DARK]
    darks = [f for f in frames if f.key == ImageKey.DARK]
    cfg = config(kind_rule="header")
    renumbered = [Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(body + darks)]
    with_darks = run(renumbered, 1, cfg)
    without = run([Frame(i, f.key, f.data, f.angle_deg) for i, f in enumerate(body)], 1, cfg)
    assert with_darks.counts["darks_after_unused"] == len(darks) and "darks_after_used" not in with_darks.counts
    assert with_darks.sinogram is not None and without.sinogram is not None
    np.testing.assert_allclose(with_darks.sinogram.data, without.sinogram.data, atol=1e-6)


def test_a_late_dark_is_judged_against_the_set_its_batch_first_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flat 4 came late first and made the first set again (new arrays); dark 1 then
    came, and the newer batch's dark (taken from the first set as it closed) was no
    longer recognised as inherited: accepted, the later slots 2.4e-3 off."""
    monkeypatch.setattr(LiveScan, "_wait_bound", lambda self: 8)
    frames, _ = flats_retaken(after=10)
    frames = noisy_references(frames)
    cfg = config(kind_rule="header")

    def drive(late: dict[int, int]) -> LiveScan:
        shared: dict[str, ReferenceSet] = {}
        scan = LiveScan(cfg, on_references=lambda refs: shared.__setitem__("refs", refs))
        worker = FrameProcessor(cfg, "w0")
        held: dict[int, list[WorkerResult]] = {}
        for frame in frames:
            worker.set_references(shared.get("refs"))
            result = WorkerResult(
                list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg, frame.index + 1))
            )
            if frame.index in late:
                held.setdefault(late[frame.index], []).append(result)
            else:
                scan.add_result(result)
            for result in held.pop(frame.index, []):
                scan.add_result(result)
        scan.finish()
        return scan

    both = drive({4: 21, 1: 23})
    dark_lost = drive({4: 21, 1: 10**6})
    assert both.rejected == {"reference_too_late": 1}
    assert both.sinogram is not None and dark_lost.sinogram is not None
    np.testing.assert_array_equal(both.sinogram.data, dark_lost.sinogram.data)


def test_angles_that_drift_off_the_grid_are_told_the_step_not_the_start(caplog: pytest.LogCaptureFixture) -> None:
    """A grid step too small by a fraction (angle_range 180 for a scan over 175): the
    angles drift half a step off by the scan's middle, and the notice's advice (move
    angle_start by that half step) only moved the sharing elsewhere."""
    true_step = 175.0 / ANGLES
    frames = [
        Frame(f.index, f.key, f.data, None if f.angle_deg is None else f.angle_deg * true_step / (180.0 / ANGLES))
        for f in make_frames()
    ]
    with caplog.at_level(logging.WARNING):
        scan = run(frames, 1, config())
    assert scan.notices.get("angles_share_slot", 0) > 0
    said = next(r.getMessage() for r in caplog.records if "angles_share_slot" in r.getMessage())
    assert "step by about" in said and "angle_start" not in said, said
    advised = float(said.split("angle_step ")[1].split(" ")[0])
    assert advised == pytest.approx(true_step, rel=0.02), said


def _scan_of(items: list[Rejected]) -> LiveScan:
    scan = LiveScan(PipelineConfig.from_mapping({"n_darks_before": 0, "n_flats_before": 0, "n_projections": 10}))
    scan.add_result(WorkerResult(items))
    scan.finish()
    return scan


def test_a_scan_that_reduced_nothing_names_a_frames_refusal_not_a_notice() -> None:
    """Notices (no frame's rejection) outnumbering the frames' refusals: the reason
    named the notice as the most frequent, whose words were never kept, and left the
    frames' cause out."""
    items = [
        Rejected(i, "corrupt_frame", f"event {i + 1}: image of 100 bytes for shape [6, 64]", i + 1) for i in range(10)
    ]
    items += [Rejected.notice("detector_message_unknown", f"event {e}: htype unknown", e) for e in range(20, 32)]
    scan = _scan_of(items)
    assert "(the first corrupt_frame: event 1: image of 100 bytes for shape [6, 64])" in scan.reason, scan.reason


def test_the_cause_a_failed_scan_quotes_is_cut_to_a_status_line() -> None:
    scan = _scan_of([Rejected(i, "corrupt_frame", f"event {i + 1}: " + "x" * 200_000, i + 1) for i in range(3)])
    assert len(scan.reason) < 1000 and scan.reason.endswith("...)"), len(scan.reason)


@pytest.mark.parametrize("order", ["sequential", "golden"])
def test_angles_half_a_step_off_are_told_the_start_whatever_their_order(
    order: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The step fitted as the angles' span over their count (three in-order frames, or a
    golden-angle order) advised an angle_step that left frames refused (review of the
    step advice): a mid-exposure mean half a step off is the grid's start."""
    step = 180.0 / ANGLES
    rng = np.random.default_rng(1)
    frames = [
        Frame(
            f.index,
            f.key,
            f.data,
            None if f.angle_deg is None else f.angle_deg + step * (0.5 + rng.uniform(-0.03, 0.03)),
        )
        for f in make_frames()
    ]
    if order == "golden":
        projections = [f for f in frames if f.key == ImageKey.PROJECTION]
        ranks = np.argsort(np.argsort((np.arange(len(projections)) * 0.6180339887) % 1.0))
        frames = [f for f in frames if f.key != ImageKey.PROJECTION] + [
            Frame(f.index, f.key, projections[r].data, projections[r].angle_deg)
            for f, r in zip(projections, ranks, strict=True)
        ]
    with caplog.at_level(logging.WARNING):
        scan = run(frames, 1, config())
    said = next(r.getMessage() for r in caplog.records if "angles_share_slot" in r.getMessage())
    assert "angle_start" in said and "angle_step" not in said, said
    start = float(said.split("angle_start ")[1].split(" ")[0])
    assert scan.notices.get("angles_share_slot", 0) > 0
    followed = run(frames, 1, config(angle_start=start))
    assert "angles_share_slot" not in followed.rejected and followed.n_projections == ANGLES, followed.rejected
