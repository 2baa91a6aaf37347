"""Projection rows through a worker's shared-memory ring: the reducer reads them where
the worker wrote them, the slot comes back when the reducer lets go, and whatever
cannot be read becomes a counted rejection, never other rows."""

from __future__ import annotations

import dataclasses
import gc
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from streamtomo.app import shared_rows
from streamtomo.app.deployment import LocalDeployment
from streamtomo.app.result_frames import PickledResult, ReceivedResult, dumps, loads
from streamtomo.app.shared_rows import RingSender, WorkerRings, shared_rows_directory
from streamtomo.pipeline.messages import DetectorInfo, PartialSum, ProjectionRows, Rejected, WorkerResult

pytestmark = pytest.mark.skipif(not shared_rows.supported(), reason="shared rows need x86-64")

ROWS, COLS = 64, 1024  # 256 kB of float32: at MIN_BYTES


def _projection(index: int, rows: np.ndarray) -> ProjectionRows:
    detector = DetectorInfo(rows.shape[0], rows.shape[1], "uint16")
    return ProjectionRows(index, 0.5 * index, True, rows, 3, "recon", detector, event=index + 7, pixels_repaired=2)


def _rows(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((ROWS, COLS), dtype=np.float32)


def _send(sender: RingSender, index: int, rows: np.ndarray) -> PickledResult:
    return dumps(WorkerResult([_projection(index, rows)]), rings=WorkerRings(sender))


def _receive(sent: PickledResult) -> ProjectionRows | Rejected:
    """What the reducer unpickles (the frames as they cross ZeroMQ, copied)."""
    result = loads(ReceivedResult(bytes(sent.stream), [memoryview(bytes(b)) for b in sent.buffers]))
    assert isinstance(result, WorkerResult)
    (item,) = result.items
    assert isinstance(item, ProjectionRows | Rejected)
    return item


@pytest.fixture
def ring_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The deployment's directory, set for this process as for a reducer (fresh reader)."""
    directory = str(tmp_path / "rings")
    os.mkdir(directory, 0o700)
    monkeypatch.setenv(shared_rows.ENV_DIR, directory)
    monkeypatch.setattr(shared_rows, "_reader", None)
    return directory


def test_rows_cross_in_the_ring_and_arrive_as_sent(ring_dir: str) -> None:
    sender = RingSender(ring_dir)
    rows = _rows(1)
    sent = _send(sender, 4, rows)
    assert not sent.buffers and len(sent.stream) < 2000  # the rows are not in the message
    item = _receive(sent)
    assert isinstance(item, ProjectionRows)
    np.testing.assert_array_equal(item.rows, rows)
    assert item == _projection(4, item.rows)  # every other field as sent
    assert sender.counts == {"shared": 1, "ring_full": 0, "too_large": 0, "rings": 1}
    assert sorted(os.listdir(ring_dir)) == [sender.ring.name] if sender.ring else False


def test_a_slot_is_reused_only_after_the_reducer_lets_its_rows_go(ring_dir: str) -> None:
    sender = RingSender(ring_dir)
    ring_slots = shared_rows.MAX_SLOTS  # 256 kB slots: the most a ring has
    held = [_receive(_send(sender, i, _rows(i))) for i in range(ring_slots)]
    # Every slot is held by the reducer: the next rows go through ZeroMQ, whole.
    overflow = _send(sender, 99, _rows(99))
    assert overflow.buffers and sender.counts["ring_full"] == 1
    item = _receive(overflow)
    assert isinstance(item, ProjectionRows)
    np.testing.assert_array_equal(item.rows, _rows(99))
    # Held rows are intact although the worker wrote more since.
    for i, kept in enumerate(held):
        assert isinstance(kept, ProjectionRows)
        np.testing.assert_array_equal(kept.rows, _rows(i))
    # A view of the rows keeps the slot: dropping the message alone frees nothing.
    view = held[3].rows[2:5]  # type: ignore[union-attr]
    del held[3]
    gc.collect()
    assert _send(sender, 100, _rows(100)).buffers
    del view
    again = _send(sender, 101, _rows(101))
    assert not again.buffers  # the slot came back
    new = _receive(again)
    assert isinstance(new, ProjectionRows)
    np.testing.assert_array_equal(new.rows, _rows(101))
    for i, kept in zip([i for i in range(ring_slots) if i != 3], held, strict=True):
        np.testing.assert_array_equal(kept.rows, _rows(i))  # type: ignore[union-attr]


def test_a_ring_the_reducer_stopped_releasing_is_replaced(ring_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sender = RingSender(ring_dir)
    for i in range(shared_rows.MAX_SLOTS):
        _send(sender, i, _rows(i))  # sent, never received: a reducer that died
    first = sender.ring
    assert first is not None
    assert _send(sender, 50, _rows(50)).buffers  # full, and not for long yet
    monkeypatch.setattr(shared_rows, "STALE_SECONDS", 0.0)
    replaced = _send(sender, 51, _rows(51))
    assert not replaced.buffers and sender.ring is not first and sender.counts["rings"] == 2
    assert sender.retired == [first]
    item = _receive(replaced)
    assert isinstance(item, ProjectionRows)
    np.testing.assert_array_equal(item.rows, _rows(51))
    _send(sender, 52, _rows(52))  # the stale retired ring goes at the next rows
    assert sender.retired == [] and os.listdir(ring_dir) == [sender.ring.name]  # type: ignore[union-attr]


def test_a_ring_replaced_by_a_larger_one_stays_until_its_rows_are_read(ring_dir: str) -> None:
    sender = RingSender(ring_dir)
    before = _send(sender, 0, _rows(0))  # still on its way when the frames grow
    first = sender.ring
    large = np.ones((2 * ROWS, COLS), np.float32)
    after = _send(sender, 1, large)
    assert sender.counts["rings"] == 2 and sender.retired == [first] and len(os.listdir(ring_dir)) == 2
    item = _receive(before)  # the reducer reads the retired ring's slot
    assert isinstance(item, ProjectionRows)
    np.testing.assert_array_equal(item.rows, _rows(0))
    del item
    grown = _receive(after)
    assert isinstance(grown, ProjectionRows)
    np.testing.assert_array_equal(grown.rows, large)
    _send(sender, 2, large)  # every slot of the retired ring is back: its file goes
    assert sender.retired == [] and os.listdir(ring_dir) == [sender.ring.name]  # type: ignore[union-attr]


def test_raw_and_corrected_rows_of_one_frame_shape_share_a_ring(ring_dir: str) -> None:
    """A worker sends raw uint16 rows until it has darks and flats, float32 after."""
    sender = RingSender(ring_dir)
    raw = np.full((2 * ROWS, COLS), 1000, np.uint16)
    item = _receive(_send(sender, 0, raw))
    assert isinstance(item, ProjectionRows)
    np.testing.assert_array_equal(item.rows, raw)
    assert item.rows.dtype == np.uint16
    _send(sender, 1, np.ones((2 * ROWS, COLS), np.float32))
    assert sender.counts == {"shared": 2, "ring_full": 0, "too_large": 0, "rings": 1}


def test_rings_are_bounded_in_number_and_size(ring_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sender = RingSender(ring_dir)
    held = [_send(sender, i, np.ones(((i + 1) * ROWS, COLS), np.float32)) for i in range(shared_rows.MAX_RINGS)]
    assert [bool(sent.buffers) for sent in held] == [False] * shared_rows.MAX_RINGS
    # Each ring holds a slot in use: a fourth ring would exceed the bound.
    sent = _send(sender, 9, np.ones(((shared_rows.MAX_RINGS + 1) * ROWS, COLS), np.float32))
    assert sent.buffers and sender.counts["rings"] == shared_rows.MAX_RINGS
    assert len(os.listdir(ring_dir)) == shared_rows.MAX_RINGS
    monkeypatch.setattr(sender, "sizing", dataclasses.replace(sender.sizing, max_slot_bytes=ROWS * COLS * 4 - 1))
    assert _send(sender, 10, _rows(10)).buffers and sender.counts["too_large"] == 1


def test_small_or_strided_rows_stay_in_the_message(ring_dir: str) -> None:
    sender = RingSender(ring_dir)
    small = np.ones((4, 16), np.float32)
    item = _receive(_send(sender, 0, small))
    assert isinstance(item, ProjectionRows)
    np.testing.assert_array_equal(item.rows, small)
    strided = np.ones((ROWS, 2 * COLS), np.float32)[:, ::2]
    item = _receive(_send(sender, 1, strided))
    assert isinstance(item, ProjectionRows)
    np.testing.assert_array_equal(item.rows, strided)
    assert sender.counts["shared"] == 0 and not os.listdir(ring_dir)


@pytest.mark.parametrize(
    "cause",
    ["no_directory", "another_directory", "file_gone", "not_a_ring", "another_token", "overwritten", "read_twice"],
)
def test_rows_the_reducer_cannot_read_are_a_counted_rejection(
    ring_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cause: str
) -> None:
    sender = RingSender(ring_dir)
    sent = _send(sender, 6, _rows(6))
    ring = sender.ring
    assert ring is not None
    expected = {
        "no_directory": f"{shared_rows.ENV_DIR} is not set",
        "another_directory": "cannot be opened",
        "file_gone": "cannot be opened",
        "not_a_ring": "is not a shared-memory ring",
        "another_token": "another token",
        "overwritten": "holds other rows now",
        "read_twice": "holds other rows now",
    }[cause]
    if cause == "no_directory":
        monkeypatch.delenv(shared_rows.ENV_DIR)
    elif cause == "another_directory":
        other = tmp_path / "other"
        other.mkdir()
        monkeypatch.setenv(shared_rows.ENV_DIR, str(other))
    elif cause == "file_gone":
        os.unlink(ring.path)
    elif cause == "not_a_ring":
        ring._header[2] = np.uint64(1 << 40)  # slots beyond any header
    elif cause == "another_token":
        ring._header[1] ^= np.uint64(1)
    elif cause == "read_twice":
        first = _receive(sent)
        assert isinstance(first, ProjectionRows)
        del first  # released: a second view must not be handed out
    else:  # the slot was released and written again (a stale reference)
        ring._header[shared_rows._FIXED + 1] = ring._header[shared_rows._FIXED]
        ring._next = 0
        assert sender.put(_rows(7)) is not None
    item = _receive(sent)
    assert isinstance(item, Rejected)
    assert (item.frame_index, item.reason, item.event) == (6, "rows_unreachable", 13)
    assert expected in item.detail and "frame 6" in item.detail


def test_a_name_outside_the_directory_is_never_opened(ring_dir: str, tmp_path: Path) -> None:
    outside = tmp_path / "rows-elsewhere"
    outside.write_bytes(b"\0" * 8192)
    reader = shared_rows.RingReader(ring_dir)
    for name in ("../rows-elsewhere", "passwd", "rows-x/../../rows-elsewhere"):
        ref = shared_rows.SlotRef(name, 1, 0, 1, (1,), "<f4")
        with pytest.raises(shared_rows.RowsUnreachable, match="not the name of a ring"):
            reader.rows(ref)


def test_without_a_usable_directory_rows_go_through_zeromq(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sender = RingSender(str(tmp_path / "missing"))
    sent = _send(sender, 0, _rows(0))
    assert sent.buffers and sender.disabled and "rows through ZeroMQ" in caplog.text
    item = _receive(sent)
    assert isinstance(item, ProjectionRows)
    np.testing.assert_array_equal(item.rows, _rows(0))


def test_a_deployment_directory_is_private_to_its_user(tmp_path: Path) -> None:
    directory = shared_rows_directory(str(tmp_path))
    assert directory.startswith(str(tmp_path / f"streamtomo-rows-{os.getpid()}-"))
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert shared_rows_directory(str(tmp_path / "missing")) == ""


def test_directories_of_deployments_that_are_gone_are_removed(tmp_path: Path) -> None:
    """A deployment killed before its stop leaves its rings; the next one removes them."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = tmp_path / f"streamtomo-rows-{gone.pid}-abc"
    orphan.mkdir()
    (orphan / "rows-1-x").write_bytes(b"\0" * 4096)
    living = tmp_path / f"streamtomo-rows-{os.getppid()}-def"  # a process that runs
    living.mkdir()
    others = [tmp_path / "streamtomo-rows-notapid", tmp_path / "unrelated-1"]
    for other in others:
        other.mkdir()
    directory = shared_rows_directory(str(tmp_path))
    assert not orphan.exists() and living.exists() and all(other.exists() for other in others)
    assert os.path.isdir(directory)


def test_results_without_rows_for_the_ring_skip_its_pickler(ring_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sender = RingSender(ring_dir)
    small = WorkerResult([_projection(0, np.ones((4, 16), np.float32)), Rejected(1, "non_finite", "x")])
    rings = WorkerRings(sender)
    assert not rings.takes_some(small) and not rings.takes_some(object())
    assert rings.takes_some(WorkerResult([_projection(2, _rows(2))]))

    def no_ring_pickler(*args: object, **kwargs: object) -> None:
        raise AssertionError("the ring's pickler ran")

    monkeypatch.setattr(shared_rows, "_RingPickler", no_ring_pickler)
    sent = dumps(small, rings=rings)
    received = loads(ReceivedResult(sent.stream, sent.buffers))
    assert [type(item) for item in received.items] == [ProjectionRows, Rejected]


def test_a_deployment_removes_the_rings_of_a_worker_it_stopped(tmp_path: Path) -> None:
    deployment = LocalDeployment(workers=1, run_dir=tmp_path / "run")
    deployment.shared_rows_dir = str(tmp_path)
    for name in ("rows-123-aa", "rows-123-bb", "rows-1234-cc", "rows-45-dd"):
        (tmp_path / name).write_bytes(b"")
    deployment._remove_rings(123)
    assert sorted(os.listdir(tmp_path)) == ["rows-1234-cc", "rows-45-dd"]


# -- partial sums -------------------------------------------------------------------------
def _partial(seed: int, n: int = 160, *, window: bool = False, sweep: bool = True) -> PartialSum:
    rng = np.random.default_rng(seed)
    blocks = {block: rng.random((3, n, n), dtype=np.float32) for block in ((4, 5) if window else (0,))}
    sweep_sum = rng.random((5, n, n), dtype=np.float32) if sweep else None
    return PartialSum("worker-1", "recon", (1, 2, 3), blocks, sweep_sum, (11, 12, 13))


def _sums_rings(ring_dir: str) -> WorkerRings:
    return WorkerRings(RingSender(ring_dir), RingSender(ring_dir, sizing=shared_rows.SUM_RINGS))


def _receive_partial(sent: PickledResult) -> PartialSum:
    result = loads(ReceivedResult(bytes(sent.stream), [memoryview(bytes(b)) for b in sent.buffers]))
    (item,) = result.items
    assert isinstance(item, PartialSum)
    return item


@pytest.mark.parametrize("window", [False, True], ids=["accumulate", "window blocks"])
@pytest.mark.parametrize("sweep", [True, False], ids=["with sweep", "no sweep"])
def test_a_partial_sum_crosses_in_one_slot_and_arrives_as_sent(ring_dir: str, window: bool, sweep: bool) -> None:
    rings = _sums_rings(ring_dir)
    partial = _partial(1, window=window, sweep=sweep)
    sent = dumps(WorkerResult([partial]), rings=rings)
    assert sent.buffers == []  # nothing of it through ZeroMQ
    assert rings.sums is not None and rings.sums.counts["shared"] == 1
    got = _receive_partial(sent)
    assert (got.worker, got.recon_id, got.frame_indices, got.events) == ("worker-1", "recon", (1, 2, 3), (11, 12, 13))
    assert list(got.blocks) == list(partial.blocks)
    for block, stack in partial.blocks.items():
        np.testing.assert_array_equal(got.blocks[block], stack)
        assert not got.blocks[block].flags.writeable  # the worker's memory: read, never written
    if sweep:
        assert got.sweep is not None and partial.sweep is not None
        np.testing.assert_array_equal(got.sweep, partial.sweep)
    else:
        assert got.sweep is None


def test_a_partial_sums_slot_comes_back_when_the_reducer_lets_go(ring_dir: str) -> None:
    """Two slots: two sums held take both, a third goes through ZeroMQ; once the reducer
    has added one (and dropped it) its slot takes the next."""
    rings = _sums_rings(ring_dir)
    assert rings.sums is not None
    held = [_receive_partial(dumps(WorkerResult([_partial(i)]), rings=rings)) for i in range(shared_rows.SUM_SLOTS)]
    third = dumps(WorkerResult([_partial(7)]), rings=rings)
    assert third.buffers and rings.sums.counts["ring_full"] == 1
    np.testing.assert_array_equal(_receive_partial(third).blocks[0], _partial(7).blocks[0])
    del held[0]
    gc.collect()
    fourth = dumps(WorkerResult([_partial(8)]), rings=rings)
    assert fourth.buffers == [] and rings.sums.counts["shared"] == shared_rows.SUM_SLOTS + 1
    np.testing.assert_array_equal(_receive_partial(fourth).sweep, _partial(8).sweep)
    np.testing.assert_array_equal(held[0].sweep, _partial(1).sweep)  # the other slot untouched


def test_an_unreadable_partial_sum_arrives_empty_and_the_ledger_discards_it(ring_dir: str) -> None:
    """Its ring gone: the reducer gets the sum without arrays, named unreachable, which
    the ledger refuses (counted); its frames are then backprojected by the reducer
    (tests/unit/pipeline/test_live_scan.py, a sum lost before its rows came)."""
    from streamtomo.pipeline.config import PipelineConfig
    from streamtomo.pipeline.streaming.contributions import ContributionLedger
    from streamtomo.pipeline.streaming.live_geometry import LiveSliceGeometry

    rings = _sums_rings(ring_dir)
    sent = dumps(WorkerResult([_partial(1)]), rings=rings)
    assert rings.sums is not None and rings.sums.ring is not None
    os.unlink(rings.sums.ring.path)
    got = _receive_partial(sent)
    assert got.recon_id.startswith("unreachable: ") and "cannot be opened" in got.recon_id
    assert got.blocks == {} and got.sweep is None and got.frame_indices == (1, 2, 3)
    geometry = LiveSliceGeometry(PipelineConfig(), DetectorInfo(8, 64, "uint16"))
    ledger = ContributionLedger(geometry)
    assert ledger.add_partial(got) is False and ledger.counts["partials_discarded"] == 1


def _resident_bytes(address: int) -> int:
    """Resident bytes of this process's mapping that holds ``address`` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and head == "Rss:":
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no mapping holds {address:#x}")


def test_the_reducer_unmaps_a_large_slot_once_it_lets_go(ring_dir: str) -> None:
    """Slots of DROP_PAGES_BYTES and more leave the reducer's resident memory with
    their release: a worker's two partial sums are not held twice."""
    rings = _sums_rings(ring_dir)
    n = 1024  # (3 + 5) x 1024^2 float32: 32 MiB
    partial = PartialSum("w", "r", (1,), {0: np.ones((3, n, n), np.float32)}, np.full((5, n, n), 2, np.float32))
    assert sum(a.nbytes for a in (partial.blocks[0], partial.sweep)) >= shared_rows.DROP_PAGES_BYTES
    got = _receive_partial(dumps(WorkerResult([partial]), rings=rings))
    assert got.sweep is not None and float(got.sweep.sum()) == 2.0 * 5 * n * n  # every page read
    address = got.sweep.ctypes.data
    assert _resident_bytes(address) >= got.sweep.nbytes
    del got
    gc.collect()
    # What stays mapped is at most what the kernel maps around a fault beyond the slot.
    assert _resident_bytes(address) <= 2 << 20
