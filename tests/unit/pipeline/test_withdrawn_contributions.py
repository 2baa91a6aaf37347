"""Frames a worker summed that the sinogram does not hold leave the live products.

Each case here ended, before, with final slices that were not the filtered
backprojection of the final sinogram (a frame in the slices and in no slot), or with
counts that did not add up (used + rejected != received).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from streamtomo.pipeline.correction.references import ReferenceSet, content_version
from streamtomo.pipeline.messages import ProjectionRows, Rejected, WorkerResult
from streamtomo.pipeline.scan import Frame
from streamtomo.pipeline.streaming.frame_processor import FrameProcessor, Message
from streamtomo.pipeline.streaming.live_scan import LiveScan
from tests.unit.pipeline.test_live_scan import config, make_frames, offline, rel

FIRST_PROJECTION = 6  # make_frames: 3 darks, 3 flats, then the projections


def adds_up(scan: LiveScan) -> bool:
    status = scan.status()
    used = int(status["darks"]) + int(status["flats"]) + int(status["projections"])
    return used + int(status["frames_rejected"]) == int(status["frames_received"])


def exact(scan: LiveScan) -> float:
    slices = scan.slices()
    assert slices is not None
    return rel(slices, offline(scan))


class Stream:
    """One scan fed by workers, the reducer's references shared with them as in replay."""

    def __init__(self) -> None:
        self.cfg = config()
        self.shared: dict[str, ReferenceSet] = {}
        self.scan = LiveScan(self.cfg, on_references=lambda refs: self.shared.__setitem__("refs", refs))

    def send(
        self,
        worker: FrameProcessor,
        frame: Frame,
        event: int | None = None,
        edit: Callable[[Message], Message | None] = lambda item: item,
        share: bool = True,
    ) -> None:
        if share:
            worker.set_references(self.shared.get("refs"))
        event = frame.index + 1 if event is None else event
        items = worker.process(frame.index, frame.key, frame.data, frame.angle_deg, event=event)
        kept = [edited for edited in (edit(item) for item in items) if edited is not None]
        self.scan.add_result(WorkerResult(list(kept)))

    def flush(self, workers: Iterable[FrameProcessor]) -> None:
        for worker in workers:
            partial = worker.flush()
            if partial is not None:
                self.scan.add_result(WorkerResult([partial]))


def test_projections_corrected_with_unknown_references_leave_the_slices() -> None:
    """A worker corrected (and summed) four projections with darks and flats this
    reducer never made: rejected as unknown_references, and their sums' share is taken
    out (final slices were 15% off the sinogram's FBP)."""
    stream = Stream()
    frames = make_frames()
    good, odd = FrameProcessor(stream.cfg, "w0"), FrameProcessor(stream.cfg, "w1")
    for frame in frames[: FIRST_PROJECTION + 1]:
        stream.send(good, frame)
    refs = stream.shared["refs"]
    brighter = refs.flat * 1.02  # its own set: the same darks, other flats
    odd.set_references(ReferenceSet(content_version(refs.dark, brighter), refs.dark, brighter, refs.before_index))
    for frame in frames[FIRST_PROJECTION + 1 :]:
        odd_one = frame.index in (10, 11, 12, 13)
        stream.send(odd if odd_one else good, frame, share=not odd_one)
    stream.flush((good, odd))
    stream.scan.finish()
    assert stream.scan.rejected == {"unknown_references": 4}
    assert exact(stream.scan) < 1e-4 and adds_up(stream.scan)


def test_projections_whose_rows_could_not_be_read_leave_the_slices() -> None:
    """``rows_unreachable`` (the shared-memory slot was gone): the worker's sums that
    hold the frame are refused and their other frames backprojected here (the frames
    stayed in the final slices, 7% off)."""
    stream = Stream()
    worker = FrameProcessor(stream.cfg, "w0")
    unreachable = {12, 20}

    def unread(item: Message) -> Message:
        if isinstance(item, ProjectionRows) and item.frame_index in unreachable:
            return Rejected(item.frame_index, "rows_unreachable", "slot gone", item.event)
        return item

    for frame in make_frames():
        stream.send(worker, frame, edit=unread)
    stream.flush([worker])
    stream.scan.finish()
    assert stream.scan.rejected == {"rows_unreachable": 2}
    assert stream.scan.counts["partials_discarded"] >= 2
    assert exact(stream.scan) < 1e-4 and adds_up(stream.scan)


def test_a_sum_that_came_before_the_rows_could_not_be_read_is_undone_at_the_end() -> None:
    """The sum holding the frame came first (results race); the rows' rejection then
    finds it in the products already: the end rebuilds them from the sinogram."""
    stream = Stream()
    worker = FrameProcessor(stream.cfg, "w0")
    held: list[Message] = []

    def hold_rows_of_12(item: Message) -> Message | None:
        if isinstance(item, ProjectionRows) and item.frame_index == 12:
            held.append(Rejected(12, "rows_unreachable", "slot gone", item.event))
            return None
        return item

    frames = make_frames()
    for frame in frames:
        stream.send(worker, frame, edit=hold_rows_of_12)
    stream.flush([worker])
    partials = stream.scan.counts["partials"]
    assert partials > 0
    stream.scan.add_result(WorkerResult(held))  # after every sum
    stream.scan.finish()
    assert exact(stream.scan) < 1e-4 and adds_up(stream.scan)
    assert stream.scan.counts["partials"] == partials  # the rebuild keeps what the sums did


def test_a_sum_whose_rows_never_came_is_undone_at_the_end() -> None:
    """orphan_partial: a frame is in a partial sum but its rows never came. Counted,
    and (it was left in the final slices) out of the products."""
    stream = Stream()
    worker = FrameProcessor(stream.cfg, "w0")

    def lose_15(item: Message) -> Message | None:
        return None if isinstance(item, ProjectionRows) and item.frame_index == 15 else item

    for frame in make_frames():
        stream.send(worker, frame, edit=lose_15)
    stream.flush([worker])
    stream.scan.finish()
    assert stream.scan.rejected == {"orphan_partial": 1}
    assert exact(stream.scan) < 1e-4 and adds_up(stream.scan)


def test_a_rejected_copy_does_not_hide_the_rejection_of_the_copy_in_use() -> None:
    """Frame 20 admitted (waiting for its references), a bad copy of it refused, then the
    admitted copy's angle found off the grid: that rejection was skipped ("one frame,
    one reason") and the frame was in no count at all."""
    stream = Stream()
    worker = FrameProcessor(stream.cfg, "w0")
    frames = make_frames()
    for frame in frames[:3]:
        stream.send(worker, frame)
    off_grid = Frame(20, frames[20].key, frames[20].data, 400.0)
    stream.send(worker, off_grid)
    stream.scan.add_result(WorkerResult([Rejected(20, "non_finite", "projection 20: 100% NaN", 99)]))
    for frame in frames[3:20] + frames[21:]:
        stream.send(worker, frame)
    stream.scan.finish()
    assert stream.scan.rejected == {"non_finite": 1, "unknown_angle": 1}
    assert adds_up(stream.scan)


def test_a_duplicate_summed_with_settings_not_applied_yet_leaves_the_slices() -> None:
    """A worker already on a new centre sends a second copy of frame 10 before the
    reducer applies the change: its sum (new settings) held the copy, was added whole
    after the change, and the copy was counted twice (used + rejected 44 of 43)."""
    stream = Stream()
    new = config(center="15.0")
    frames = make_frames()
    a, b = FrameProcessor(stream.cfg, "a"), FrameProcessor(stream.cfg, "b")
    for frame in frames[:21]:
        stream.send(a, frame)
    stream.flush([a])
    b.configure(new)
    stream.send(b, frames[10], event=100)
    stream.scan.reconfigure(new)
    a.configure(new)
    for frame in frames[21:]:
        stream.send(b, frame)
    stream.flush([b])
    stream.scan.finish()
    assert stream.scan.rejected == {"duplicate_frame": 1}
    assert exact(stream.scan) < 1e-4 and adds_up(stream.scan)


def test_every_sum_counts_when_nothing_was_withdrawn() -> None:
    """The common path is untouched: every sum is added, none backprojected here."""
    stream = Stream()
    workers = [FrameProcessor(stream.cfg, f"w{i}") for i in range(2)]
    for frame in make_frames():
        stream.send(workers[frame.index % 2], frame)
    stream.flush(workers)
    stream.scan.finish()
    assert stream.scan.counts["partials_discarded"] == 0 and not stream.scan.ledger.tainted  # type: ignore[union-attr]
    assert exact(stream.scan) < 1e-4 and adds_up(stream.scan)
