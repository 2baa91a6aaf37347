"""The first ``reference_senders`` of a broadcast event's workers by name send its rows."""

from __future__ import annotations

from streamtomo.workers import broadcast_senders
from streamtomo.workers.broadcast_senders import record, sends_rows


def test_the_first_workers_by_name_send_the_rows_of_a_broadcast() -> None:
    record("m1", 3, {"detector": ["w-b", "w-a", "w-c"], "angle": ["w-c"]})
    assert [sends_rows("m1", 3, "detector", w, 1) for w in ("w-a", "w-b", "w-c")] == [True, False, False]
    assert [sends_rows("m1", 3, "detector", w, 2) for w in ("w-a", "w-b", "w-c")] == [True, True, False]
    assert [sends_rows("m1", 3, "detector", w) for w in ("w-a", "w-b", "w-c")] == [True, True, False]  # default 2


def test_without_a_record_every_worker_sends() -> None:
    record("m1", 3, {"detector": ["w-b", "w-a"]})
    assert not sends_rows("m1", 3, "detector", "w-b", 1)
    assert sends_rows("m1", 4, "detector", "w-b", 1)  # another event
    assert sends_rows("m1", 3, "angle", "w-b", 1)  # another stream
    assert sends_rows(None, 3, "detector", "w-b", 1)  # replay: no mapping
    assert sends_rows("m1", 3, "detector", "w-x", 1)  # not among them


def test_an_event_for_one_worker_is_not_recorded() -> None:
    record("m1", 5, {"detector": ["w-b", "w-a"]})
    record("m1", 5, {"detector": ["w-b"]})  # not a broadcast: leaves the record as it is
    assert not sends_rows("m1", 5, "detector", "w-b", 1)
    record("m1", 6, {"detector": ["w-b"]})
    assert sends_rows("m1", 6, "detector", "w-b", 1)


def test_a_new_mapping_drops_the_previous_records() -> None:
    """Each mapping numbers its events from 1: an old record must not decide for a new event."""
    record("m1", 7, {"detector": ["w-b", "w-a"]})
    record("m2", 1, {"detector": ["w-b", "w-a"]})
    assert sends_rows("m2", 7, "detector", "w-b", 1)
    assert sends_rows("m1", 7, "detector", "w-b", 1)  # the old mapping's worker is gone by now
    assert not sends_rows("m2", 1, "detector", "w-b", 1)


def test_the_records_stay_bounded() -> None:
    for event in range(broadcast_senders.MAX_RECORDED + 10):
        record("m3", event, {"detector": ["w-b", "w-a"]})
    assert len(broadcast_senders._recorded) == broadcast_senders.MAX_RECORDED
    assert sends_rows("m3", 0, "detector", "w-b", 1)  # the oldest went
    assert not sends_rows("m3", broadcast_senders.MAX_RECORDED + 9, "detector", "w-b", 1)
