"""The controller says a scan is finished in the read that completes it, not a second later."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from dranspose.controller import Controller, ControllerSettings
from dranspose.protocol import (
    ControllerUpdate,
    DistributedStateEnum,
    RedisKeys,
    ReducerUpdate,
    WorkAssignment,
    WorkerUpdate,
)

from streamtomo.app import completion_order


class OneEventMapping:
    """The scan: event 0, on worker w1 (what ``assign_work`` asks of its mapping)."""

    def __init__(self) -> None:
        self.uuid = uuid.uuid4()

    def len(self) -> int:
        return 1

    def get_event_workers(self, no: int) -> WorkAssignment:
        return WorkAssignment(event_number=no, assignments={"detector": ["w1"]})


class BrokenMapping(OneEventMapping):
    def get_event_workers(self, no: int) -> WorkAssignment:
        raise KeyError(no)


async def finished_before_the_next_read(redis_url: str, mapping: OneEventMapping | None = None) -> bool:
    """Whether the controller sent ``finished`` before it went back to wait for updates,
    after one read that brings the reducer's update of the scan's only event and then the
    worker's update that completes it (the order in which the race showed)."""
    controller = Controller(ControllerSettings(redis_url=redis_url))
    mapping = mapping or OneEventMapping()
    controller.mapping = mapping

    async def assign_worker_in_mapping(worker: str, completed: int) -> None:
        return None  # no further events to hand out

    controller.assign_worker_in_mapping = assign_worker_in_mapping
    ready = RedisKeys.ready(mapping.uuid)
    for update in (
        ReducerUpdate(state=DistributedStateEnum.IDLE, completed=0, worker="w1"),
        WorkerUpdate(state=DistributedStateEnum.IDLE, completed=[0], worker="w1", has_result=[True]),
    ):
        await controller.redis.xadd(ready, {"data": update.model_dump_json()})

    reads = 0
    second_read = asyncio.Event()
    xread = controller.redis.xread

    async def counting_xread(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads == 2:
            second_read.set()
        return await xread(*args, **kwargs)

    controller.redis.xread = counting_xread
    loop = asyncio.create_task(controller.assign_work())
    try:
        await asyncio.wait_for(second_read.wait(), 30)
        sent = await controller.redis.xrange(RedisKeys.updates())
        return any(ControllerUpdate.model_validate_json(fields["data"]).finished for _, fields in sent)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await controller.redis.aclose()


def test_the_update_that_completes_the_scan_finishes_it_at_once(redis_url: str) -> None:
    # Without the mend the event is booked in a task that runs only while the next read
    # waits: the check after the first read found the scan unfinished, and the read then
    # waited its whole second (measured: the scan's end came 1.07 s late, 1 scan in 14-20).
    completion_order.install()
    assert asyncio.run(finished_before_the_next_read(redis_url))


@pytest.mark.allow_error_logs
def test_a_booking_that_fails_is_logged_and_the_controller_reads_on(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    completion_order.install()
    with caplog.at_level(logging.ERROR, logger=completion_order.__name__):
        # Unfinished (nothing booked), but the update loop went back to reading.
        assert not asyncio.run(finished_before_the_next_read(redis_url, BrokenMapping()))
    assert [r.getMessage() for r in caplog.records] == ["booking the completed events [0] of w1 failed"]


def test_installing_twice_wraps_once() -> None:
    completion_order.install()
    wrapped = Controller._process_worker_update
    completion_order.install()
    assert Controller._process_worker_update is wrapped


def test_a_dranspose_that_books_otherwise_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    async def other(self: Any, update: Any) -> None:
        return None

    monkeypatch.setattr(Controller, "_process_worker_update", other)
    with pytest.raises(RuntimeError, match="another dranspose version"):
        completion_order.install()
