"""A worker sends its small results together, in order, only where its loop allows it."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from streamtomo.pipeline.messages import (
    AngleRow,
    DetectorInfo,
    PartialSum,
    ProjectionRows,
    ReferenceRows,
    Rejected,
    StreamEnded,
    WorkerResult,
)
from streamtomo.pipeline.scan import ImageKey
from streamtomo.workers import held_results
from streamtomo.workers.held_results import HeldResults
from streamtomo.workers.tomo_worker import TomoWorker
from tests.unit.workers.test_tomo_worker import event, frames, parameters

DETECTOR = DetectorInfo(8, 32, "uint16")


def rows(index: int, nbytes: int = 1024) -> ProjectionRows:
    values = np.zeros(nbytes // 4, np.float32)
    return ProjectionRows(index, float(index), True, values, 1, "r", DETECTOR, event=index)


def result(*items: Any) -> WorkerResult:
    return WorkerResult(list(items))


def describe(items: list[Any]) -> list[tuple[str, int]]:
    return [(type(i).__name__, getattr(i, "frame_index", getattr(i, "event", -1))) for i in items]


def run(worker: TomoWorker, params: dict[Any, Any]) -> list[WorkerResult | None]:
    return [worker.process_event(event(number, parts), params) for number, parts in enumerate(frames())]


@pytest.mark.parametrize("enabled", [False, True])
def test_a_worker_sends_the_same_messages_in_fewer_results_where_its_loop_allows(enabled: bool) -> None:
    params = parameters(flush_every=1000)  # the partial sum goes with the stream's end
    alone = run(TomoWorker(parameters=params), params)  # as in replay: nothing held
    worker = TomoWorker(parameters=params)
    if enabled:
        worker.held.enable()  # as the worker service's loop does
    together = run(worker, params)

    def items(results: list[WorkerResult | None]) -> list[tuple[str, int]]:
        return describe([i for r in results if r is not None for i in r.items])

    assert items(together) == items(alone)
    if enabled:
        # The references go at once; the four projections wait for the stream's end,
        # ahead of its partial sum and end (rows before the sum of their backprojections).
        assert [r is None for r in together] == [True, False, False, True, True, True, True, False]
        last = together[-1]
        assert last is not None and last.carried_events == (3, 4, 5, 6)
        assert describe(last.items) == [
            ("ProjectionRows", 2),
            ("ProjectionRows", 3),
            ("ProjectionRows", 4),
            ("ProjectionRows", 5),
            ("PartialSum", -1),
            ("StreamEnded", -1),
        ]
    else:
        assert [r is None for r in together] == [r is None for r in alone]
        assert all(r is None or r.carried_events == () for r in together)


@pytest.mark.parametrize("enabled", [False, True])
def test_every_result_names_the_scan_it_was_made_for(enabled: bool) -> None:
    """Held or not, taken by the loop or sent with an event: the reducer refuses
    another scan's results by this name (WorkerResult.scan)."""
    params = parameters(flush_every=1000)
    worker = TomoWorker(parameters=params, state=SimpleNamespace(name="w", mapping_uuid="scan-7"))
    if enabled:
        worker.held.enable()
    sent = [r for r in run(worker, params) if r is not None]
    assert sent and {r.scan for r in sent} == {"scan-7"}
    if enabled:  # what the loop takes when no next event comes
        assert worker.held.offer(result(rows(1)), 101, age_limit=60) is None
        taken = worker.held.take()
        assert taken is not None and taken[1].scan == "scan-7"


def enabled(**limits: int) -> HeldResults:
    held = HeldResults(**limits)
    held.enable()
    return held


def test_results_go_at_the_event_limit_the_byte_limit_and_the_age_limit() -> None:
    held = enabled(max_events=3, max_bytes=10_000)
    assert held.offer(result(rows(1)), 101, age_limit=60) is None
    assert held.offer(result(rows(2)), 102, age_limit=60) is None
    assert describe(held.offer(result(rows(3)), 103, age_limit=60).items) == [  # type: ignore[union-attr]
        ("ProjectionRows", 1),
        ("ProjectionRows", 2),
        ("ProjectionRows", 3),
    ]
    assert held.offer(result(rows(4, 6000)), 104, age_limit=60) is None
    assert len(held.offer(result(rows(5, 6000)), 105, age_limit=60).items) == 2  # type: ignore[union-attr]
    assert len(held.offer(result(rows(6, 20_000)), 106, age_limit=60).items) == 1  # type: ignore[union-attr]
    assert held.offer(result(rows(7)), 107, age_limit=0.0) is None  # the first one is always held
    assert len(held.offer(result(rows(8)), 108, age_limit=0.0).items) == 2  # type: ignore[union-attr]
    assert held.events == 0


def test_anything_but_rows_goes_at_once_after_what_is_held() -> None:
    held = enabled()
    assert held.offer(result(rows(1), AngleRow(0, 1.0)), 1, age_limit=60) is None
    assert held.offer(None, 2, age_limit=60) is None  # an event with nothing to send: not held
    assert (held.holds(1), held.holds(2)) == (True, False)
    for number, other in enumerate(
        (
            Rejected(2, "non_finite", "why", 2),
            ReferenceRows(0, ImageKey.DARK, np.zeros(4, np.float32), DETECTOR, 0),
            StreamEnded(9),  # the stream's end: what is held goes before it
        ),
        start=3,
    ):
        assert held.offer(result(rows(number)), 10 * number, age_limit=60) is None
        sent = held.offer(result(other), 10 * number + 1, age_limit=60)
        assert sent is not None and sent.items[-1] is other and isinstance(sent.items[-2], ProjectionRows)
        assert sent.carried_events == ((1, 30) if number == 3 else (10 * number,))
    assert held.events == 0 and held.deadline() is None


def test_what_waits_too_long_is_taken_as_the_last_held_events_result() -> None:
    held = enabled()
    assert held.take() is None
    assert held.offer(result(rows(1)), 7, age_limit=60) is None
    assert held.offer(result(rows(2)), 8, age_limit=60) is None
    deadline = held.deadline()
    assert deadline is not None and 59 < deadline - time.monotonic() <= 60
    taken = held.take()
    assert taken is not None
    carrier, sent = taken
    assert (carrier, sent.carried_events, describe(sent.items)) == (
        8,
        (7,),
        [("ProjectionRows", 1), ("ProjectionRows", 2)],
    )
    assert (held.events, held.deadline(), held.holds(8)) == (0, None, False)


def test_an_event_after_the_age_limit_takes_what_is_held_even_with_nothing_of_its_own() -> None:
    held = enabled()
    assert held.offer(result(rows(1)), 1, age_limit=0.0) is None  # the first one is always held
    sent = held.offer(None, 2, age_limit=0.0)
    assert sent is not None and sent.carried_events == (1,) and describe(sent.items) == [("ProjectionRows", 1)]


def test_nothing_is_held_until_enabled() -> None:
    held = HeldResults()
    one = result(rows(1))
    assert held.offer(one, 1, age_limit=60) is one
    assert (held.events, held.holds(1), held.deadline()) == (0, False, None)


def test_what_is_dropped_at_a_stop_is_logged_with_its_count(caplog: pytest.LogCaptureFixture) -> None:
    held = enabled()
    held.offer(result(rows(1)), 1, age_limit=60)
    held.offer(result(rows(2)), 2, age_limit=60)
    with caplog.at_level(logging.WARNING, logger=held_results.__name__):
        held.drop("the scan was stopped")
        held.drop("again: nothing held")
    assert [r.getMessage()[:44] for r in caplog.records] == ["the results of 2 events held back to go toge"]
    assert held.events == 0


def test_the_age_limit_is_at_most_half_the_publish_interval() -> None:
    assert held_results.max_age(0.25) == pytest.approx(held_results.MAX_AGE_S)
    assert held_results.max_age(0.05) == pytest.approx(0.025)


def test_partial_sums_are_not_held() -> None:
    assert PartialSum not in held_results.HOLDABLE and StreamEnded not in held_results.HOLDABLE
