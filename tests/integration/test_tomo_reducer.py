"""The dranspose reducer adapter, driven directly (no replay): results in, a live domain out."""

from __future__ import annotations

import gc
import json
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import numpy as np
import pytest
from dranspose.protocol import ParameterName, WorkParameter

from streamtomo.hsds_bridge import nexus_file
from streamtomo.pipeline.correction.references import ReferenceSet
from streamtomo.pipeline.messages import WorkerResult
from streamtomo.pipeline.scan import ImageKey
from streamtomo.pipeline.streaming.frame_processor import FrameProcessor
from streamtomo.reducer import final_file, tomo_reducer, volume_job
from streamtomo.reducer.domain_layout import new_domain, update_domain
from streamtomo.reducer.tomo_reducer import TomoReducer
from tests.unit.hsds_bridge.test_nexus_file import assert_file_equals_domain
from tests.unit.pipeline.test_live_scan import config, make_frames
from tests.unit.reducer.test_volume_job import reduced_scan


def parameters(**values: object) -> dict[Any, Any]:
    cfg = config(**values)
    return {
        ParameterName(k): WorkParameter(name=ParameterName(k), data=str(v).encode(), value=v)
        for k, v in cfg.to_dict().items()
    }


@pytest.fixture
def reducer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reducer's servers on free ports."""
    monkeypatch.setenv("STREAMTOMO_HTTP_PORT", "0")
    monkeypatch.setenv("STREAMTOMO_CONTROL_PORT", "0")


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
    assert reducer.wait_end_of_scan(60)
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
    cfg = config(volume=True)
    scan = reduced_scan(cfg)
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


def feed(reducer: Any, seed: int = 0) -> FrameProcessor:
    worker = FrameProcessor(reducer.scan.config)
    for frame in make_frames(seed=seed):
        reducer.process_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    reducer.timer()
    return worker


@pytest.fixture
def final_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A deployment's reducer environment: each scan's final file goes to ``final_dir``."""
    monkeypatch.setenv("STREAMTOMO_HTTP_PORT", "0")
    monkeypatch.setenv("STREAMTOMO_CONTROL_PORT", "0")
    monkeypatch.setenv("STREAMTOMO_FINAL_DIR", str(tmp_path / "results"))
    return tmp_path / "results"


@pytest.fixture
def slow_write(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """write_nexus waits for ``gate`` before it writes; ``started`` says it was called."""
    started, gate = threading.Event(), threading.Event()
    real: Callable[..., Path] = nexus_file.write_nexus

    def slow(*args: Any, **kwargs: Any) -> Path:
        started.set()
        assert gate.wait(60), "the test never opened the gate"
        return real(*args, **kwargs)

    monkeypatch.setattr(nexus_file, "write_nexus", slow)
    yield started, gate
    gate.set()  # a failed test leaves no writer waiting


def mapping(uuid: str) -> Any:
    """dranspose's reducer state: the scan's mapping uuid names its final file."""
    return SimpleNamespace(mapping_uuid=uuid)


def test_the_final_file_is_the_domain_as_the_scan_ended(final_dir: Path) -> None:
    reducer = TomoReducer(parameters=parameters(volume=True, backend="direct"), context={}, state=mapping("one"))
    try:
        feed(reducer)
        reducer.finish()
        path = reducer.wait_final_file(60)
        assert path is not None and reducer.final_file == path
        assert Path(path) == final_dir / "scan-one.nxs"
        assert_file_equals_domain(Path(path), reducer.domain, final=True)
        assert sorted(p.name for p in final_dir.iterdir()) == [Path(path).name]  # no temporary file left
    finally:
        reducer.close()


def _status_text(reducer: TomoReducer, name: str) -> str:
    return str(reducer.domain.dataset(f"/entry/status/{name}").array[()])


def test_the_live_domain_says_where_the_final_file_is_and_once_it_is_written(final_dir: Path) -> None:
    reducer = TomoReducer(parameters=parameters(), context={}, state=mapping("one"))
    try:
        reducer.timer()  # its first publish, before any frame
        assert _status_text(reducer, "final_file") == str(final_dir / "scan-one.nxs")
        assert "final_file_written" not in reducer.domain.get("/entry/status").children  # made once it is written
        feed(reducer)
        reducer.finish()
        path = reducer.wait_final_file(60)
        assert path is not None
        assert (_status_text(reducer, "final_file_written"), _status_text(reducer, "final_file_error")) == ("1", "")
        with nexus_file_reader(path) as f:  # the file names itself, and says nothing of its own writing
            assert f["/entry/status/final_file"][()].decode() == path
            assert "final_file_written" not in f["/entry/status"] and "final_file_error" not in f["/entry/status"]
    finally:
        reducer.close()


def test_a_final_file_that_cannot_be_written_says_why_in_the_live_domain(
    final_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder that is not there any more (a file in its place, a mount gone): the
    failure was a WARNING in the reducer's log and nothing else."""
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the results folder should be")
    monkeypatch.setenv("STREAMTOMO_FINAL_DIR", str(blocked / "results"))
    reducer = TomoReducer(parameters=parameters(), context={}, state=mapping("one"))
    try:
        feed(reducer)
        reducer.finish()
        assert reducer.wait_final_file(60) is None
        assert _status_text(reducer, "final_file") == str(blocked / "results" / "scan-one.nxs")
        assert _status_text(reducer, "final_file_written") == "0"
        assert "Not a directory" in _status_text(reducer, "final_file_error")
        assert _status_text(reducer, "state") == "finished"  # the scan is what it is; its file is not
    finally:
        reducer.close()
    assert "not written" in caplog.text


def test_without_a_final_folder_the_live_domain_names_no_final_file(reducer_env: None) -> None:
    reducer = TomoReducer(parameters=parameters(), context={}, state=mapping("one"))
    try:
        feed(reducer)
        reducer.finish()
        assert reducer.wait_end_of_scan(60)
        assert _status_text(reducer, "final_file") == ""
        assert "final_file_written" not in reducer.domain.get("/entry/status").children
    finally:
        reducer.close()


def test_finish_returns_before_the_final_file_is_written_and_close_waits_for_it(
    final_dir: Path,
    slow_write: tuple[threading.Event, threading.Event],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started, gate = slow_write
    # The gate stays shut while the next scan starts: it waits for the held arrays
    # this long, then takes new ones.
    monkeypatch.setenv("STREAMTOMO_POOL_WAIT", "0.2")
    context: dict[Any, Any] = {}
    first = TomoReducer(parameters=parameters(volume=True, backend="direct"), context=context, state=mapping("one"))
    second = None
    try:
        worker = feed(first)
        first.finish()  # returns with the writer waiting at the gate
        assert started.wait(60)
        assert first.final_file is None and not list(final_dir.glob("scan-*.nxs"))  # none, not half a file
        sinogram = first.domain.dataset("/entry/sinogram/data").array.copy()
        slices = first.domain.dataset("/entry/reconstruction/data").array.copy()
        # While the file is written the domain holds still: a late result is not taken,
        # a live change waits (the file is the scan as it ended, not half of a rebuild).
        frame = make_frames()[-1]  # a projection the scan never had (a new frame number, other counts)
        late = worker.process(frame.index + 100, frame.key, frame.data // 2, frame.angle_deg)
        first.process_result(WorkerResult(list(late)))
        assert "scan one: results after its end are not taken" in caplog.text
        first.set_parameter("filter", "hann")
        first.timer(first._parameters)
        assert np.array_equal(first.domain.dataset("/entry/sinogram/data").array, sinogram)
        assert np.array_equal(first.domain.dataset("/entry/reconstruction/data").array, slices)
        assert int(first.domain.dataset("/entry/status/settings_pending").array[()]) == 1
        # ... and counted where readers see it, not only in the log
        assert int(first.domain.dataset("/entry/status/results_after_end").array[()]) == 1
        # dranspose builds the next scan's reducer in the same context: its frames must
        # not land in the arrays the first file is still being written from.
        second = TomoReducer(
            parameters=parameters(volume=True, backend="direct"), context=context, state=mapping("two")
        )
        feed(second, seed=1)
        assert not np.array_equal(second.domain.dataset("/entry/sinogram/data").array, sinogram)
        gate.set()
        second.close()  # the last reducer: dranspose closes only this one; it waits for the first's file
        path = first.final_file
        assert path is not None and Path(path).name == "scan-one.nxs"
        assert sorted(p.name for p in final_dir.iterdir()) == ["scan-one.nxs", "scan-two.nxs"]  # two ends failed
        with nexus_file_reader(path) as f:
            assert np.array_equal(f["/entry/sinogram/data"][()], sinogram)
            assert f["/entry/status/state"][()].decode() == "finished"
        assert_file_equals_domain(Path(path), first.domain, final=True)
        first.timer(first._parameters)  # the file is written: the change applies now
        assert int(first.domain.dataset("/entry/status/settings_pending").array[()]) == 0
        assert not np.array_equal(first.domain.dataset("/entry/reconstruction/data").array, slices)
    finally:
        gate.set()
        first.close()


def test_the_next_scan_cancels_a_volume_under_way_and_its_file_says_so(
    final_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from streamtomo.pipeline.reconstruction.backends.fourier import FourierBackend
    from streamtomo.reducer import volume_job

    monkeypatch.setattr(volume_job, "rows_per_publish", lambda pairs: 1)
    real = FourierBackend.reconstruct_rows
    second_batch, release = threading.Event(), threading.Event()
    context: dict[Any, Any] = {}
    first = TomoReducer(parameters=parameters(volume=True), context=context, state=mapping("one"))

    def slow(self: FourierBackend, plan: Any, sinogram: Any, rows: range, *args: Any) -> None:
        real(self, plan, sinogram, rows, *args)
        if rows.start == 1:  # the second batch holds until the test lets it go on
            second_batch.set()
            assert release.wait(60), "the test never released the volume"

    monkeypatch.setattr(FourierBackend, "reconstruct_rows", slow)
    second = None
    feeding: threading.Thread | None = None
    try:
        worker = feed(first)
        first.finish()  # returns with the final slices out; the volume follows
        assert second_batch.wait(60)
        assert str(first.domain.dataset("/entry/status/state").array[()]) == "reconstructing"
        sinogram = first.domain.dataset("/entry/sinogram/data").array.copy()
        # The volume is made from the sinogram as the stream left it: a late result is not taken.
        frame = make_frames()[-1]
        first.process_result(WorkerResult(list(worker.process(frame.index + 100, frame.key, frame.data // 2, 1.0))))
        assert "scan one: results after its end are not taken" in caplog.text
        assert np.array_equal(first.domain.dataset("/entry/sinogram/data").array, sinogram)
        # Built on dranspose's event loop: it returns at once (it only asks the volume
        # to stop); its first result waits for the first scan's end before it takes
        # the pooled arrays the first scan's volume and file still use.
        second = TomoReducer(parameters=parameters(volume=True), context=context, state=mapping("two"))
        feeding = threading.Thread(target=feed, args=(second, 1))
        feeding.start()
        feeding.join(0.5)
        assert feeding.is_alive() and second.scan.sinogram is None  # waiting, no array taken
        release.set()
        feeding.join(60)
        assert not feeding.is_alive()
        # The first scan ended with two slices and says why; its file is the scan as it ended.
        path = first.wait_final_file(60)
        assert path is not None
        rows = first.domain.dataset("/entry/reconstruction/volume").shape[0]
        with nexus_file_reader(path) as f:
            assert f["/entry/status/state"][()].decode() == "finished"
            assert int(f["/entry/status/volume_slices_done"][()]) == 2 < rows
            assert f["/entry/status/reason"][()].decode() == (
                f"the end-of-scan volume was cancelled after 2 of {rows} slices: the next scan started"
            )
            volume = f["/entry/reconstruction/volume"]  # the two slices computed, no zeros beside them
            live = first.domain.dataset("/entry/reconstruction/volume")
            assert volume.shape == (2, *live.shape[1:]) and np.array_equal(volume[()], live.array[:2])
            assert list(volume.attrs["detector_rows"]) == list(live.attrs["detector_rows"])[:2]
            assert np.array_equal(f["/entry/sinogram/data"][()], sinogram)
    finally:
        release.set()
        if feeding is not None:
            feeding.join(60)
        if second is not None:
            second.close()
        first.close()


def test_a_next_scan_that_stops_waiting_for_an_overrunning_end_takes_none_of_its_arrays(
    final_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The next scan waits PREVIOUS_SCAN_WAIT_S for the previous scan's end (volume,
    HSDS, final file), then goes on. The previous scan's arrays must stay its own until
    its final file is written: the next scan maps fresh ones, and the file holds the
    previous scan as it ended (it used to take the previous sinogram, not yet held, and
    the previous file would have been written from the next scan's rows)."""
    from streamtomo.pipeline.reconstruction.backends.fourier import FourierBackend
    from streamtomo.reducer import tomo_reducer, volume_job

    monkeypatch.setattr(tomo_reducer, "PREVIOUS_SCAN_WAIT_S", 0.3)
    monkeypatch.setenv("STREAMTOMO_POOL_WAIT", "0.2")
    monkeypatch.setattr(volume_job, "rows_per_publish", lambda pairs: 1)
    real = FourierBackend.reconstruct_rows
    in_batch, release = threading.Event(), threading.Event()

    def stuck(self: FourierBackend, plan: Any, sinogram: Any, rows: range, *args: Any) -> None:
        in_batch.set()
        assert release.wait(60), "the test never released the volume"  # a batch longer than the wait
        real(self, plan, sinogram, rows, *args)

    monkeypatch.setattr(FourierBackend, "reconstruct_rows", stuck)
    context: dict[Any, Any] = {}
    first = TomoReducer(parameters=parameters(volume=True), context=context, state=mapping("one"))
    second = None
    try:
        feed(first)
        first.finish()
        assert in_batch.wait(60)
        assert first.scan.sinogram is not None
        sinogram = first.scan.sinogram.data.copy()
        second = TomoReducer(parameters=parameters(volume=False), context=context, state=mapping("two"))
        feed(second, seed=1)  # goes on after 0.3 s: the first scan's end still runs
        assert "scan one: its end (volume, HSDS, final file) still runs" in caplog.text
        assert second.scan.sinogram is not None
        assert not np.shares_memory(second.scan.sinogram.by_angle, first.scan.sinogram.by_angle)
        release.set()
        path = first.wait_final_file(60)
        assert path is not None
        with nexus_file_reader(path) as f:
            np.testing.assert_array_equal(f["/entry/sinogram/data"][()], sinogram)
    finally:
        release.set()
        if second is not None:
            second.close()
        first.close()


def test_parameters_handed_to_the_timer_while_the_volume_is_made_change_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """dranspose hands a scan's timer the parameters as they are now (the next scan's,
    say) also while this scan's volume is made: they used to rebuild the final slices
    with another centre than the volume's."""
    from streamtomo.reducer import volume_job

    monkeypatch.setenv("STREAMTOMO_HTTP_PORT", "0")
    monkeypatch.setenv("STREAMTOMO_CONTROL_PORT", "0")
    real = volume_job.reconstruct
    started, gate = threading.Event(), threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        started.set()
        assert gate.wait(60), "the test never let the volume go on"
        return real(*args, **kwargs)

    monkeypatch.setattr(volume_job, "reconstruct", held)
    reducer = TomoReducer(parameters=parameters(volume=True, backend="direct", center="15.5"), context={})
    try:
        feed(reducer)
        reducer.finish()
        assert started.wait(60)
        slices = reducer.scan.slices().copy()
        reducer.timer(parameters(volume=True, backend="direct", center="10.0"))
        assert reducer.scan.config.center == "15.5"
        gate.set()
        assert reducer.wait_end_of_scan(60)
        assert reducer.scan.state == "finished"
        np.testing.assert_array_equal(reducer.scan.slices(), slices)
        row = int(reducer.scan.geometry.slice_positions[0])
        np.testing.assert_allclose(reducer.scan.volume[row], slices[0], atol=1e-4 * np.abs(slices[0]).max())
    finally:
        gate.set()
        reducer.close()


def test_closing_the_next_reducer_before_any_result_ends_the_previous_volume(
    final_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dranspose closes only the last reducer: a stop right after the next scan began
    (no result yet) must still end the previous scan's volume and write its file."""
    from streamtomo.pipeline.reconstruction.backends.fourier import FourierBackend
    from streamtomo.reducer import volume_job

    monkeypatch.setattr(volume_job, "rows_per_publish", lambda pairs: 1)
    real_reconstruct, real_cancel = FourierBackend.reconstruct_rows, volume_job.VolumeCancel.set
    held, cancelled = threading.Event(), threading.Event()

    def slow(self: FourierBackend, plan: Any, sinogram: Any, rows: range, *args: Any) -> None:
        real_reconstruct(self, plan, sinogram, rows, *args)
        held.set()
        assert cancelled.wait(60), "nothing cancelled the volume"

    def cancel(self: volume_job.VolumeCancel, reason: str) -> None:
        real_cancel(self, reason)
        cancelled.set()

    monkeypatch.setattr(FourierBackend, "reconstruct_rows", slow)
    monkeypatch.setattr(volume_job.VolumeCancel, "set", cancel)
    context: dict[Any, Any] = {}
    first = TomoReducer(parameters=parameters(volume=True), context=context, state=mapping("one"))
    try:
        feed(first)
        first.finish()
        assert held.wait(60)
        second = TomoReducer(parameters=parameters(volume=True), context=context, state=mapping("two"))
        second.close()
        path = first.final_file  # written: close waited for every scan's file
        assert path is not None
        with nexus_file_reader(path) as f:
            assert f["/entry/status/state"][()].decode() == "finished"
            assert "the next scan started" in f["/entry/status/reason"][()].decode()
    finally:
        cancelled.set()
        first.close()


@pytest.mark.parametrize("next_scan_does", ["timer", "result", "close"])
def test_a_scan_replaced_before_its_end_ends_stopped_with_its_final_file(final_dir: Path, next_scan_does: str) -> None:
    """dranspose never calls the finish of a scan the next mapping replaced (its sender
    died, a control system posted the next scan): it had no final file at all. The next
    scan's reducer ends it, at its first timer or result, or when it closes."""
    context: dict[Any, Any] = {}
    first = TomoReducer(parameters=parameters(volume=True), context=context, state=mapping("one"))
    worker = FrameProcessor(first.scan.config)
    frames = make_frames()
    for frame in frames[: len(frames) // 2]:
        first.process_result(WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))))
    received = first.scan.admission.received
    second = TomoReducer(parameters=parameters(volume=True), context=context, state=mapping("two"))
    try:
        if next_scan_does == "timer":
            second.timer()
        elif next_scan_does == "result":
            frame = frames[0]
            second.process_result(
                WorkerResult(
                    list(
                        FrameProcessor(second.scan.config).process(frame.index, frame.key, frame.data, frame.angle_deg)
                    )
                )
            )
        else:
            second.close()
        assert first.wait_end_of_scan(60)
        path = first.wait_final_file(60)
        assert path is not None and Path(path) == final_dir / "scan-one.nxs"
        with nexus_file_reader(path) as f:
            assert f["/entry/status/state"][()].decode() == "stopped"
            reason = f["/entry/status/reason"][()].decode()
            assert f"scan two was posted before this one ended: it ended with what was reduced, {received} of" in reason
            assert int(f["/entry/status/frames_received"][()]) == received
            assert np.any(f["/entry/reconstruction/data"][()])  # the slices of what was reduced
            assert "volume" not in f["/entry/reconstruction"]  # a stopped scan gets none
        second.timer()  # once: no second end, no second file
        assert sorted(p.name for p in final_dir.glob("scan-one*")) == ["scan-one.nxs"]
    finally:
        second.close()
        first.close()


@pytest.mark.parametrize("final_file", [False, True])
def test_the_previous_scans_reducer_is_freed_when_the_next_scan_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, final_file: bool
) -> None:
    """By reference counting, once the next scan's first result no longer needs it:
    a reference cycle (the scan held the reducer's methods) kept its arrays until
    Python's next full collection, scans later. With a final file: its writer, kept in
    the context until the next scan's file starts, held the reducer's report callback,
    and so the whole reducer (0.2 GB more at the reducer's peak at 1024^2)."""
    monkeypatch.setenv("STREAMTOMO_HTTP_PORT", "0")
    monkeypatch.setenv("STREAMTOMO_CONTROL_PORT", "0")
    if final_file:
        monkeypatch.setenv("STREAMTOMO_FINAL_DIR", str(tmp_path / "results"))
    context: dict[Any, Any] = {}
    first = TomoReducer(parameters=parameters(volume=False), context=context, state=mapping("one"))
    feed(first)
    first.finish()
    assert first.wait_end_of_scan(60)
    assert (first.wait_final_file(60) is not None) == final_file
    gone = weakref.ref(first)
    del first
    gc.disable()  # no automatic collection may do it for us
    second = None
    try:
        second = TomoReducer(parameters=parameters(volume=False), context=context, state=mapping("two"))
        feed(second, seed=1)
        assert gone() is None
    finally:
        gc.enable()
        if second is not None:
            second.close()


def test_close_warns_when_the_final_file_is_not_written_in_time(
    final_dir: Path,
    slow_write: tuple[threading.Event, threading.Event],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    started, gate = slow_write
    monkeypatch.setenv("STREAMTOMO_FINAL_WAIT", "0.01")
    reducer = TomoReducer(parameters=parameters(volume=False, backend="direct"), context={})
    feed(reducer)
    reducer.finish()
    assert started.wait(60)
    reducer.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("not written within" in m and "lost if the process stops now" in m for m in warnings), warnings
    assert reducer.final_file is None
    gate.set()
    path = reducer.wait_final_file(60)  # the writer goes on while the process lives
    assert path is not None and Path(path).is_file()


def nexus_file_reader(path: str) -> Any:
    import h5py

    return h5py.File(path, "r")


def test_a_scan_in_reused_memory_reads_zeros_where_no_projection_came(final_dir: Path) -> None:
    """The next scan of a geometry takes the pooled sinogram as the previous scan left
    it (zeroing it cost 0.13 s of the reducer's CPU per scan at 1024^2 x 300): what it
    has not filled must still read as zeros through the REST API, the chunks sent to
    HSDS and the final file, never as the previous scan's rows."""
    import h5pyd

    from streamtomo.hsds_bridge.chunk_plan import capture_node, copy_chunk

    context: dict[Any, Any] = {}
    first = TomoReducer(parameters=parameters(volume=False), context=context, state=mapping("one"))
    second = None
    try:
        feed(first)
        first.finish()
        assert first.wait_final_file(60) is not None
        assert first.scan.sinogram is not None
        previous = first.scan.sinogram.by_angle
        assert np.all(np.any(previous, axis=(1, 2)))  # every slot holds the first scan's rows

        second = TomoReducer(parameters=parameters(volume=False), context=context, state=mapping("two"))
        worker = FrameProcessor(second.scan.config)
        frames = make_frames(seed=1)
        half = [f for f in frames if f.key != ImageKey.PROJECTION or f.angle_deg < 90.0]
        for frame in half:
            second.process_result(
                WorkerResult(list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg)))
            )
        second.timer()
        sinogram = second.scan.sinogram
        assert sinogram is not None and np.shares_memory(sinogram.by_angle, previous)  # reused, not zeroed
        filled = sinogram.counts > 0
        assert 0 < filled.sum() < filled.size
        expected = np.where(filled[None, :, None], sinogram.data, 0.0)
        with h5pyd.File(second.scan.config.domain, "r", endpoint=second.endpoint) as f:
            np.testing.assert_array_equal(f["/entry/sinogram/data"][()], expected)
            np.testing.assert_array_equal(
                f["/entry/sinogram/data"][:, [1, 2, filled.size - 1], :], expected[:, [1, 2, -1]]
            )
        dataset = second.domain.dataset("/entry/sinogram/data")
        node = capture_node(dataset)
        for index in np.ndindex(*dataset.chunk_grid()):
            chunk = copy_chunk(dataset, node, index)
            np.testing.assert_array_equal(chunk.data, expected[dataset.chunk_selection(index)])

        second.finish()  # the second half never comes: those angles stay empty, as zeros
        path = second.wait_final_file(60)
        assert path is not None
        with nexus_file_reader(path) as f:
            np.testing.assert_array_equal(f["/entry/sinogram/data"][()], expected)
        assert_file_equals_domain(Path(path), second.domain, final=True)
        assert not np.any(sinogram.by_angle[~filled])  # the memory itself, once the scan ended
    finally:
        if second is not None:
            second.close()
        first.close()


def test_a_live_change_the_controller_does_not_take_is_refused_and_undone(reducer_env: None, refused_url: str) -> None:
    """Distributed: the workers take a change from the controller, whose parameters
    replace the reducer's at its next timer. A change the controller did not take was
    answered 'set' and then undone without a word (settings_pending stayed 1)."""
    dead = refused_url  # a port nothing listens on
    reducer = TomoReducer(parameters=parameters(controller_url=dead, center="15.5"), context={})
    try:
        feed(reducer)
        before = reducer._parameters[ParameterName("center")]
        with pytest.raises(ConnectionError, match=f"the controller at {dead} did not take center"):
            reducer.set_parameter("center", "20")
        assert reducer._parameters[ParameterName("center")] is before
        reducer.timer(reducer._parameters)
        assert reducer.scan.config.center == "15.5"
        assert int(reducer.domain.dataset("/entry/status/settings_pending").array[()]) == 0
    finally:
        reducer.close()


def test_a_centre_change_while_the_volume_is_made_waits_for_the_volume_and_the_file(
    final_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change was applied while the volume ran with the centre it had taken at its
    start: the file said centre 12 and held slices at 12 beside a volume at 15.5."""
    started, gate = threading.Event(), threading.Event()
    real = volume_job.reconstruct

    def held(*args: Any, **kwargs: Any) -> Any:
        started.set()
        assert gate.wait(60), "the test never opened the gate"
        return real(*args, **kwargs)

    monkeypatch.setattr(volume_job, "reconstruct", held)
    reducer = TomoReducer(
        parameters=parameters(volume=True, backend="direct", center="15.5"), context={}, state=mapping("held")
    )
    try:
        feed(reducer)
        reducer.finish()
        assert started.wait(60)
        assert "once the volume and the final file are done" in reducer.set_parameter("center", "12.0")
        reducer.timer(reducer._parameters)  # a publish while the volume is made: the change waits
        assert reducer.scan.config.center == "15.5"
        assert reducer.domain.dataset("/entry/status/settings_pending").array[()] == 1
        gate.set()
        assert reducer.wait_end_of_scan(60)
        path = reducer.wait_final_file(60)
        assert path is not None
        with h5py.File(path, "r") as f:  # the scan as it ended: one centre throughout
            assert float(f["/entry/reconstruction/center"][()]) == 15.5
            slice_row = int(f["/entry/reconstruction/slice_rows"][0])
            rows = list(f["/entry/volume/detector_row"][()])
            np.testing.assert_allclose(
                f["/entry/reconstruction/data"][0], f["/entry/volume/data"][rows.index(slice_row)], atol=1e-5
            )
        reducer.timer(reducer._parameters)  # then the change is applied to the live slices
        assert reducer.scan.config.center == "12.0"
        assert reducer.domain.dataset("/entry/status/settings_pending").array[()] == 0
    finally:
        gate.set()
        reducer.close()


@pytest.mark.parametrize("error", [ValueError, RuntimeError])
@pytest.mark.parametrize("failing_call", [1, 2], ids=["first batch", "second batch"])
@pytest.mark.allow_error_logs  # a RuntimeError is a fault in the engine: logged with its traceback
def test_an_engine_error_mid_volume_keeps_the_slices_done_and_says_why(
    final_dir: Path, monkeypatch: pytest.MonkeyPatch, error: type[Exception], failing_call: int
) -> None:
    """volume_slices_done went back to 0 with no reason, while the file kept the slices
    computed and said none were; the file then held the volume's planned shape, zeros
    past the slices done (all of it when the first batch failed)."""
    monkeypatch.setattr(volume_job, "batch_rows", lambda *args: 1)
    calls: list[int] = []
    real = volume_job.reconstruct

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == failing_call:
            raise error("engine: unsupported size")
        return real(*args, **kwargs)

    monkeypatch.setattr(volume_job, "reconstruct", failing)
    reducer = TomoReducer(parameters=parameters(volume=True, backend="direct"), context={}, state=mapping("err"))
    try:
        feed(reducer)
        reducer.finish()
        assert reducer.wait_end_of_scan(60)
        path = reducer.wait_final_file(60)
        assert path is not None
        with h5py.File(path, "r") as f:
            status = f["/entry/status"]
            assert status["state"].asstr()[()] == "finished"  # the stream was reduced
            reason = status["reason"].asstr()[()]
            done = failing_call - 1
            assert f"the end-of-scan volume stopped after {done} slices: engine: unsupported size" in reason
            assert int(status["volume_slices_done"][()]) == done
            assert "volume" not in f["/entry"]  # not the default plot
            if done == 0:
                assert "volume" not in f["/entry/reconstruction"]
            else:
                volume = f["/entry/reconstruction/volume"]
                assert volume.shape[0] == 1 and np.any(volume[0])  # what volume_slices_done says
                assert int(volume.attrs["slices_done"]) == 1
                assert int(volume.attrs["slices_planned"]) == len(reducer.scan.geometry.sinogram_rows) > 1
    finally:
        reducer.close()


def test_close_while_the_volume_outlasts_its_wait_leaves_one_writer_and_a_finished_scan(
    final_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() took a scan whose end outlasted the wait for one stopped mid-scan: it said
    'failed', started a second writer of the same file, and the end-of-scan thread then
    said 'finished' and wrote it again."""
    monkeypatch.setattr(tomo_reducer, "PREVIOUS_SCAN_WAIT_S", 0.5)
    monkeypatch.setattr(volume_job, "batch_rows", lambda *args: 1)
    in_batch, release = threading.Event(), threading.Event()
    real = volume_job.reconstruct
    calls: list[int] = []

    def stuck(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            in_batch.set()
            assert release.wait(60), "the test never released the batch"
        return real(*args, **kwargs)

    monkeypatch.setattr(volume_job, "reconstruct", stuck)
    writers: list[str] = []
    start = final_file.FinalFile.start

    def counted(self: final_file.FinalFile) -> final_file.FinalFile:
        writers.append(self.scan)
        return start(self)

    monkeypatch.setattr(final_file.FinalFile, "start", counted)
    reducer = TomoReducer(parameters=parameters(volume=True, backend="direct"), context={}, state=mapping("X"))
    closer = threading.Thread(target=reducer.close)
    try:
        feed(reducer)
        reducer.finish()
        assert in_batch.wait(60)
        closer.start()
        state = reducer.domain.dataset("/entry/status/state")
        closer.join(2.0)  # past its 0.5 s wait: close goes on while the batch is held
        assert state.array[()] == "reconstructing"
    finally:
        release.set()
        closer.join(60)
    # close waited for the file: a reducer process leaves once close returns, and the
    # end-of-scan thread (a daemon) went with it, file unwritten.
    assert not closer.is_alive() and reducer.final_file is not None
    assert reducer.wait_end_of_scan(60)
    path = reducer.wait_final_file(60)
    assert path is not None and writers == ["X finished"]
    with h5py.File(path, "r") as f:
        assert f["/entry/status/state"].asstr()[()] == "finished"
        assert (
            "the end-of-scan volume was cancelled after 2 of 4 slices: the reducer stopped"
            in (f["/entry/status/reason"].asstr()[()])
        )


def test_a_change_after_a_setting_fell_back_is_applied_as_the_workers_apply_it(
    reducer_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A centre set before the first frame falls back at it (the detector does not allow
    it). Held against the scan's settings as stored, every later live change was refused
    at the next timer ('parameter change refused'), while the workers applied it."""
    reducer = TomoReducer(parameters=parameters(center="500"), context={})
    try:
        worker = FrameProcessor(reducer.scan.config)
        for frame in make_frames()[:20]:
            items = worker.process(frame.index, frame.key, frame.data, frame.angle_deg)
            reducer.process_result(WorkerResult(list(items)), reducer._parameters)
        reducer.timer(reducer._parameters)
        reducer.set_parameter("filter", "hann")
        reducer.timer(reducer._parameters)
        worker.configure(reducer._params.config(reducer._parameters))  # the workers' settings: the stored ones
        assert reducer.scan.config.filter == "hann" and reducer._pending_change is None
        assert reducer.scan.geometry is not None and worker.geometry is not None
        assert worker.geometry.recon_id == reducer.scan.geometry.recon_id  # their partial sums add up
        assert not any("parameter change refused" in r.getMessage() for r in caplog.records)
    finally:
        reducer.close()


def test_the_set_kept_for_the_next_scan_says_where_it_lies(reducer: Any) -> None:
    """A next scan with keep_references uses it only on the same detector rows
    (LiveScan._check_kept_references): the set in the context and in the shared
    parameter carry their footprint."""
    feed(reducer)
    kept = reducer.context["references"]
    assert kept.footprint == reducer.scan.reference_footprint() != ""
    shared = ReferenceSet.from_bytes(reducer._parameters[ParameterName("references")].data)
    assert shared.footprint == kept.footprint and shared.version == kept.version


def test_a_result_made_for_another_scan_is_counted_and_not_taken(reducer_env: None) -> None:
    """A worker that stalled in scan one and went on once scan two had started sends
    scan one's frames to scan two's reducer: at their old numbers they took the places
    of scan two's own frames (which then came as repeated numbers)."""
    frames = make_frames()
    stale_worker = FrameProcessor(config())
    for frame in frames[:6]:  # its references, then one projection of its own scan
        list(stale_worker.process(frame.index, frame.key, frame.data, frame.angle_deg))
    projection = frames[10]
    stale = WorkerResult(
        list(stale_worker.process(projection.index, projection.key, projection.data // 2, projection.angle_deg)),
        scan="one",
    )
    assert stale.items
    reducers = [TomoReducer(parameters=parameters(), context={}, state=mapping(uuid)) for uuid in ("two", "two")]
    try:
        workers = [FrameProcessor(r.scan.config) for r in reducers]
        for i, frame in enumerate(frames):
            if i == 8:
                reducers[0].process_result(SimpleNamespace(worker="worker-2", payload=stale))
            for reducer, worker in zip(reducers, workers, strict=True):
                items = list(worker.process(frame.index, frame.key, frame.data, frame.angle_deg))
                reducer.process_result(WorkerResult(items, scan="two"))
        for reducer in reducers:
            reducer.timer()
        with_stale, reference = (r.domain for r in reducers)
        for path in ("/entry/sinogram/data", "/entry/reconstruction/data"):
            assert np.array_equal(with_stale.dataset(path).array, reference.dataset(path).array), path
        rejected = json.loads(_status_text(reducers[0], "rejected"))
        assert rejected == {"result_of_another_scan": 1}
        assert int(with_stale.dataset("/entry/status/frames_rejected").array[()]) == 0
    finally:
        for reducer in reducers:
            reducer.close()
