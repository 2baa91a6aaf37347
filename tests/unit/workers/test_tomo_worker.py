"""The dranspose worker adapter, driven with dranspose's own event types (no services)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from dranspose.event import EventData, StreamData
from dranspose.protocol import EventNumber, ParameterName, StreamName, WorkParameter

from streamtomo.pipeline.formats import stins
from streamtomo.pipeline.messages import (
    PartialSum,
    ProjectionRows,
    ReferenceCopy,
    ReferenceRows,
    Rejected,
    StreamEnded,
    WorkerResult,
)
from streamtomo.pipeline.streaming.live_scan import LiveScan
from streamtomo.workers import broadcast_senders
from streamtomo.workers.tomo_worker import TomoWorker

ROWS, COLS = 8, 32


def parameters(**values: object) -> dict[Any, Any]:
    base: dict[str, object] = {
        "n_darks_before": 1,
        "n_flats_before": 1,
        "n_projections": 4,
        "angle_stream": "",
        "flush_every": 2,
    }
    base.update(values)
    return {
        ParameterName(k): WorkParameter(name=ParameterName(k), data=str(v).encode(), value=v) for k, v in base.items()
    }


def event(number: int, parts: list[bytes]) -> EventData:
    return EventData(
        event_number=EventNumber(number), streams={StreamName("detector"): StreamData(typ="STINS", frames=parts)}
    )


def frames(cols: int = COLS) -> list[list[bytes]]:
    rng = np.random.default_rng(0)
    dark = np.full((ROWS, cols), 100, np.uint16)
    flat = np.full((ROWS, cols), 20000, np.uint16)
    images = [dark, flat] + [rng.integers(5000, 15000, (ROWS, cols)).astype(np.uint16) for _ in range(4)]
    return [
        stins.encode_header(0, "test"),
        *(stins.encode_image(i + 1, i, image) for i, image in enumerate(images)),
        stins.encode_series_end(7),
    ]


def run_worker(params: dict[Any, Any], cols: int = COLS) -> list[Any]:
    worker = TomoWorker(parameters=params)
    items: list[Any] = []
    for number, parts in enumerate(frames(cols)):
        result = worker.process_event(event(number, parts), params)
        if result is not None:
            items.extend(result.items)
    return items


def test_a_stream_becomes_references_projections_partial_sums_and_its_end() -> None:
    items = run_worker(parameters())
    assert [type(i) for i in items if isinstance(i, ReferenceRows)] == [ReferenceRows, ReferenceRows]
    projections = [i for i in items if isinstance(i, ProjectionRows)]
    assert [p.frame_index for p in projections] == [2, 3, 4, 5]
    # The worker saw the whole first batch itself: every projection is corrected here.
    assert all(p.reference_version != 0 and p.rows.dtype == np.float32 for p in projections)
    partials = [i for i in items if isinstance(i, PartialSum)]
    assert sorted(f for p in partials for f in p.frame_indices) == [2, 3, 4, 5]
    assert all(p.sweep is not None and p.sweep.shape[0] == 7 and np.any(p.sweep) for p in partials)
    assert isinstance(items[-1], StreamEnded)


def broadcast_scan(
    names: tuple[str, ...], params: dict[Any, Any], lost: str = ""
) -> tuple[LiveScan, dict[str, list[Any]]]:
    """A distributed scan as dranspose runs it: header, dark, flat and end go to every
    worker (recorded as its service records the controller's assignments), each
    projection to one. ``lost``: a worker whose results never reach the reducer."""
    mapping = f"mapping-{'-'.join(names)}"
    workers = [TomoWorker(parameters=params, state=SimpleNamespace(name=n, mapping_uuid=mapping)) for n in names]
    parts = frames()
    broadcast = (0, 1, 2, len(parts) - 1)
    for number in broadcast:
        broadcast_senders.record(mapping, number, {"detector": list(names)})
    scan = LiveScan(workers[0].processor.config)
    items: dict[str, list[Any]] = {name: [] for name in names}
    for number, message in enumerate(parts):
        survivors = [w for w in workers if w.name != lost]
        for worker in workers if number in broadcast else [survivors[number % len(survivors)]]:
            result = worker.process_event(event(number, message), params)
            if result is not None:
                items[worker.name].extend(result.items)
                if worker.name != lost:
                    scan.add_result(result)
    scan.finish()
    return scan, items


def sent(items: list[Any]) -> list[type]:
    return [type(i) for i in items if isinstance(i, ReferenceRows | ReferenceCopy)]


@pytest.mark.parametrize(
    ("names", "senders", "rows_from"),
    [(("w-b", "w-a"), 1, {"w-a"}), (("w-c", "w-a", "w-b"), 2, {"w-a", "w-b"}), (("w-b", "w-a"), 2, {"w-a", "w-b"})],
)
def test_the_first_workers_of_a_broadcast_send_the_rows_the_others_a_copy_notice(
    names: tuple[str, ...], senders: int, rows_from: set[str]
) -> None:
    """dranspose broadcasts darks and flats: each worker builds its references from
    them, ``reference_senders`` send the rows (at 2048^2 with 8 workers, 7 of 8 copies
    crossed the reducer's socket to be dropped there)."""
    params = parameters(reference_senders=senders)
    scan, items = broadcast_scan(names, params)
    for name in names:
        assert sent(items[name]) == [ReferenceRows if name in rows_from else ReferenceCopy] * 2, name
    # Every worker corrected its projections with the references it built from the
    # frames, sent or not: the same set.
    versions = {p.reference_version for name in names for p in items[name] if isinstance(p, ProjectionRows)}
    assert len(versions) == 1 and 0 not in versions
    assert scan.rejected == {}
    assert (scan.status()["darks"], scan.status()["flats"], scan.status()["projections"]) == (1, 1, 4)
    assert scan.counts["reference_copies"] == 2 * (len(names) - 1)
    assert scan.counts.get("reference_copies_with_rows", 0) == 2 * (len(rows_from) - 1)
    single = LiveScan(scan.config)
    single.add_result(WorkerResult(run_worker(params)))
    single.finish()
    assert single.sinogram is not None and scan.sinogram is not None
    np.testing.assert_array_equal(scan.sinogram.data, single.sinogram.data)


def test_a_sender_lost_at_the_scans_start_costs_no_reference() -> None:
    """The default two senders: the first one's results never arrive, the second's
    rows make the reducer's set the one the other workers corrected with."""
    scan, _ = broadcast_scan(("w-a", "w-b", "w-c"), parameters(), lost="w-a")
    assert scan.rejected == {}
    assert (scan.status()["darks"], scan.status()["flats"], scan.status()["projections"]) == (1, 1, 4)
    # With one sender the same loss leaves the reducer without the darks and flats the
    # other workers corrected with: the scan fails, counted under its reason.
    alone, _ = broadcast_scan(("w-a", "w-b", "w-c"), parameters(reference_senders=1), lost="w-a")
    assert alone.rejected == {"no_references": 4} and alone.state == "failed"


def test_frames_the_worker_cannot_process_are_rejected_with_a_reason() -> None:
    # One detector column cannot be interpolated: the backprojection refuses it. The
    # frames must reach the reducer as rejected (dranspose would log and drop them).
    items = run_worker(parameters(), cols=1)
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert [r.frame_index for r in rejected] == [2, 3, 4, 5]
    assert {r.reason for r in rejected} == {"worker_failed"}
    assert not [i for i in items if isinstance(i, ProjectionRows)]


def test_a_corrupt_message_is_rejected_not_raised() -> None:
    worker = TomoWorker(parameters=parameters())
    result = worker.process_event(event(1, [b"{not json", b"\x00"]), parameters())
    assert result is not None
    assert [type(i) for i in result.items] == [Rejected] and result.items[0].reason == "corrupt_frame"


@pytest.mark.parametrize(
    ("shared_by", "keep_references", "takes_it"),
    [("scan-1", False, False), ("scan-2", False, True), ("scan-1", True, True), ("", False, True)],
)
def test_darks_and_flats_another_scan_shared_do_not_win_over_this_scans_own(
    shared_by: str, keep_references: bool, takes_it: bool
) -> None:
    """The controller keeps the 'references' parameter across scans. A set shared for
    scan 1 used to correct every projection of scan 2 over its own broadcast darks and
    flats; a reducer that never made it (one restarted after a crash) rejected them all
    as unknown_references and the scan failed."""
    from dranspose.protocol import ParameterName, WorkParameter

    from streamtomo.pipeline.correction.references import ReferenceSet, content_version
    from streamtomo.pipeline.formats import stins
    from streamtomo.pipeline.messages import ProjectionRows
    from streamtomo.workers.tomo_worker import TomoWorker

    dark, flat = np.full((ROWS, COLS), 100, np.float32), np.full((ROWS, COLS), 30000, np.float32)
    old = ReferenceSet(content_version(dark, flat), dark, flat, before_index=1, scan=shared_by)
    assert ReferenceSet.from_bytes(old.to_bytes()).scan == shared_by
    params = parameters(n_darks_before=1, n_flats_before=1, n_projections=3, keep_references=keep_references)
    params[ParameterName("references")] = WorkParameter(
        name=ParameterName("references"), data=old.to_bytes(), value=None
    )
    worker = TomoWorker(parameters=params, state=SimpleNamespace(name="w0", mapping_uuid="scan-2"))
    rng = np.random.default_rng(0)
    images = [np.full((ROWS, COLS), 100, np.uint16), np.full((ROWS, COLS), 20000, np.uint16)]
    images += [rng.integers(5000, 15000, (ROWS, COLS)).astype(np.uint16) for _ in range(3)]
    parts = [stins.encode_header(0, "t"), *(stins.encode_image(i + 1, i, im) for i, im in enumerate(images))]
    versions = set()
    for number, message in enumerate(parts):
        result = worker.process_event(event(number, message), params)
        items = result.items if result is not None else []
        versions |= {item.reference_version for item in items if isinstance(item, ProjectionRows)}
    own = content_version(images[0].astype(np.float32), images[1].astype(np.float32))
    assert versions == ({old.version} if takes_it else {own})
