"""The dranspose worker adapter, driven with dranspose's own event types (no services)."""

from __future__ import annotations

from typing import Any

import numpy as np
from dranspose.event import EventData, StreamData
from dranspose.protocol import EventNumber, ParameterName, StreamName, WorkParameter

from streamtomo.pipeline.formats import stins
from streamtomo.pipeline.messages import PartialSum, ProjectionRows, ReferenceRows, Rejected, StreamEnded
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
